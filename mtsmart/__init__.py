"""mtsmart: robust multi-task fine-tuning of pre-trained transformer encoders with SMART."""

__version__ = "0.1.0"
