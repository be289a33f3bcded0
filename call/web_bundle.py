"""What the browser peer (``web/``) runs: the ONNX step graphs of ``streaming.onnx_export`` for the
bandwidths a call uses, and a ``manifest.json`` that tells the page what the Python peers would put
in their ``HEADER`` (fingerprint, rate, frame size, code bits) and the state each graph carries.

    python -m call.web_bundle --model default --out web/models

Run once, before the relay serves the page (``server.py --web DIR``): the relay never imports torch,
so it only reads what this wrote. The graphs are the files ``streaming.onnx_engine`` builds and runs,
so the page and a Python ONNX peer agree code for code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codec import EncodecModel, load_model
from streaming.onnx_export import check_exportable, export_step, graph_name, state_specs

from .model_header import stream_header_for

MANIFEST = "manifest.json"


def manifest(model: EncodecModel) -> dict[str, object]:
    """The page's view of the model: its stream header, and for each bandwidth its encoder graph."""
    config, header = model.config, stream_header_for(model)
    return {
        "fingerprint": header.fingerprint.hex(),
        "sample_rate": header.sample_rate,
        "channels": header.channels,
        "samples_per_frame": header.samples_per_frame,
        "codebook_nbits": header.codebook_nbits,
        "max_codebooks": header.max_codebooks,
        "bandwidths": {
            f"{bandwidth:g}": graph_name("encoder", config.num_quantizers_for_bandwidth(bandwidth))
            for bandwidth in config.target_bandwidths
        },
        "decoder": graph_name("decoder"),
        "encoder_state": [[spec.name, list(spec.shape)] for spec in state_specs(model, "encoder")],
        "decoder_state": [[spec.name, list(spec.shape)] for spec in state_specs(model, "decoder")],
    }


def write_bundle(model: EncodecModel, out: Path) -> list[Path]:
    """Exports the greedy encoder graph of every bandwidth, the decoder graph and the manifest (last:
    a directory with a manifest is complete)."""
    check_exportable(model)
    out.mkdir(parents=True, exist_ok=True)
    counts = sorted({model.config.num_quantizers_for_bandwidth(b) for b in model.config.target_bandwidths})
    written = [export_step(model, out / graph_name("decoder"), "decoder")]
    written += [export_step(model, out / graph_name("encoder", n), "encoder", n) for n in counts]
    path = out / MANIFEST
    path.write_text(json.dumps(manifest(model), indent=1) + "\n")
    return written + [path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default (the bundled model), a checkpoint dir, a hub id or a Meta .th file")
    parser.add_argument("--out", required=True, help="directory for the graphs and manifest.json")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model).eval()
        written = write_bundle(model, Path(args.out))
    except (OSError, ValueError) as error:
        parser.error(str(error))
    for path in written:
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
