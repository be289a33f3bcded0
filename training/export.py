"""Write a training checkpoint as the bundled default model (hub layout: config.json + model.safetensors).

    python -m training.export --checkpoint training/runs/default/last.pt --out codec/default_model

Tensors are stored in float16 to halve the file (the 32 codebooks with their EMA statistics are
most of it); loading casts them back to float32, so the shipped model *is* the float16-rounded one
and every number in the model card was measured on it.
"""

from __future__ import annotations

import argparse

import torch

from codec import EncodecModel

from .checkpoints import export_model, model_from_checkpoint


def export(checkpoint: str, out: str, dtype: torch.dtype = torch.float16) -> EncodecModel:
    model, state = model_from_checkpoint(checkpoint)
    size = export_model(model, out, dtype)
    reloaded = EncodecModel.from_pretrained(out)
    print(f"{out}: {reloaded.num_parameters():,} parameters, model.safetensors {size / 1e6:.1f} MB, step {state['step']}")
    return reloaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="training/runs/default/last.pt")
    parser.add_argument("--out", default="codec/default_model")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    args = parser.parse_args()
    export(args.checkpoint, args.out, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
