"""Why batches with SMART's adversarial term run in float32 under --precision bf16 or fp16:
SMART's perturbation is below those formats' resolution, so the adversarial divergence
R_s they compute is rounding noise or zero.

For the default SMART settings and the paper's, and for each precision (autocast on the
CPU): two sentences through the first layers of all-MiniLM-L6-v2 and a fresh two-class
head whose weights are scaled so its logits are O(1), as a trained head's are. Printed:
R_s at the adversarial ν after one ascent step, R_s at a random ν of the same size, and
their ratio (how much the ascent finds). In float32 the ascent finds thousands of times
more than chance; in bf16 and fp16 both are zero or the same rounding flip.

    python scripts/smart_precision.py                 # ../shared/models/all-MiniLM-L6-v2, 2 layers
    python scripts/smart_precision.py --layers 6
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from mtsmart import smart
from mtsmart.config import SMART_PRESETS, SmartConfig
from mtsmart.losses import symmetric_kl
from mtsmart.model import MultiTaskModel, quiet_transformers

DEFAULT_ENCODER = str(Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2")
SENTENCES = ["a man is playing a guitar on the street",
             "the cat sat on the mat while it rained all day long"]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=os.environ.get("MTSMART_ENCODER", DEFAULT_ENCODER))
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    from transformers import AutoModel, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(args.encoder)
        encoder = AutoModel.from_pretrained(args.encoder, num_hidden_layers=args.layers)
    model = MultiTaskModel(encoder, {"t": (2, 0.0)}).eval()
    with torch.no_grad():
        model.heads["t"].linear.weight.mul_(20)  # logits of a few units, as after training
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    embeds = model.embed(batch["input_ids"]).detach()
    mask = batch["attention_mask"]

    def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
        return model("t", inputs_embeds=inputs_embeds, attention_mask=mask,
                     token_type_ids=batch["token_type_ids"])

    settings = {"defaults": SmartConfig(), "paper": SmartConfig(**SMART_PRESETS["paper"])}
    print(f"{'settings':9s} {'precision':9s} {'R_s adversarial':>16s} {'R_s random':>12s} {'ratio':>9s}")
    for name, cfg in settings.items():
        scale = (smart.embedding_scale(model.encoder.get_input_embeddings().weight, cfg.norm)
                 if cfg.relative_to_embedding_norm else 1.0)
        epsilon, noise_std, step_size = cfg.epsilon * scale, cfg.noise_std * scale, cfg.step_size * scale
        for precision, dtype in PRECISIONS.items():
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                clean = forward(embeds).detach()
                nu = smart.adversarial_perturbation(
                    forward, embeds, clean, mask, symmetric_kl, epsilon=epsilon, noise_std=noise_std,
                    step_size=step_size, num_steps=cfg.num_steps, norm=cfg.norm,
                    generator=torch.Generator().manual_seed(1))
                random = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(2))
                random = smart.project_per_token(random * 1e3, epsilon, cfg.norm) * mask.unsqueeze(-1)
                with torch.no_grad():
                    adversarial = float(symmetric_kl(forward(embeds + nu), clean))
                    chance = float(symmetric_kl(forward(embeds + random), clean))
            ratio = f"{adversarial / chance:9.0f}" if chance > 0 else f"{'-':>9s}"
            print(f"{name:9s} {precision:9s} {adversarial:16.3e} {chance:12.3e} {ratio}")


if __name__ == "__main__":
    main()
