"""What the browser peer (``web/``) runs: the ONNX step graphs of ``streaming.onnx_export`` for the
bandwidths a call uses, and a ``manifest.json`` that tells the page what the Python peers would put
in their ``HEADER`` (fingerprint, rate, frame size, code bits) and the state each graph carries.

    python -m call.web_bundle --model default --out web/models [--bandwidth 6 …]

Run once, before the relay serves the page (``server.py --web DIR``): the relay never imports torch,
so it only reads what this wrote. The graphs compute what ``streaming.onnx_engine``'s do, with the
matrix products as MatMul (``export_step(nchwc=False)``: WASM has no NCHWc kernels, and the native
engine's 1×1 convs run slower there), so the page and a Python ONNX peer agree code for code, float
near-ties aside.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codec import EncodecModel, load_model
from streaming.onnx_export import check_exportable, export_step, graph_name, state_specs

from .model_header import stream_header_for

MANIFEST = "manifest.json"


def manifest(model: EncodecModel, bandwidths: list[float]) -> dict[str, object]:
    """The page's view of the model: its stream header, and for each bandwidth offered its encoder graph."""
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
            for bandwidth in bandwidths
        },
        "decoder": graph_name("decoder"),
        "encoder_state": [[spec.name, list(spec.shape)] for spec in state_specs(model, "encoder")],
        "decoder_state": [[spec.name, list(spec.shape)] for spec in state_specs(model, "decoder")],
    }


def write_bundle(model: EncodecModel, out: Path, bandwidths: list[float] | None = None) -> list[Path]:
    """Exports the greedy encoder graph of each bandwidth (default: every one the model offers), the
    decoder graph and the manifest (last: a directory with a manifest is complete)."""
    check_exportable(model)
    bandwidths = sorted(bandwidths or model.config.target_bandwidths)
    for bandwidth in bandwidths:
        model.config.check_bandwidth(bandwidth)
    out.mkdir(parents=True, exist_ok=True)
    counts = sorted({model.config.num_quantizers_for_bandwidth(b) for b in bandwidths})
    written = [export_step(model, out / graph_name("decoder"), "decoder", nchwc=False)]
    written += [export_step(model, out / graph_name("encoder", n), "encoder", n, nchwc=False) for n in counts]
    path = out / MANIFEST
    path.write_text(json.dumps(manifest(model, bandwidths), indent=1) + "\n")
    return written + [path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default (the bundled model), a checkpoint dir, a hub id or a Meta .th file")
    parser.add_argument("--out", required=True, help="directory for the graphs and manifest.json")
    parser.add_argument("--bandwidth", type=float, action="append",
                        help="a bandwidth the page offers (repeatable; default: every bandwidth of the model)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model).eval()
        written = write_bundle(model, Path(args.out), args.bandwidth)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    for path in written:
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
