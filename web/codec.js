// The EnCodec step graphs (call/web_bundle.py exports them; streaming/onnx_engine.py runs the same files in
// Python) on onnxruntime-web: one frame per run, every piece of state fed back as the next run's input.

import * as ort from "./vendor/ort.wasm.min.mjs";

/** One thread, no proxy worker: we already are a worker, and threads would need cross-origin isolation. */
export function configureRuntime(base) {
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = new URL("vendor/", base).href;
  ort.env.logLevel = "error";
}

export async function loadSession(url) {
  return ort.InferenceSession.create(url, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

/** A stream's state for one graph family: zeros at the start, then each run's `new_*` outputs. */
class StepState {
  constructor(specs) {
    this.names = specs.map(([name]) => name);
    this.tensors = specs.map(([, shape]) => {
      const dims = [1, ...shape];
      return new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
    });
  }

  feeds(extra) {
    const feeds = { ...extra };
    this.names.forEach((name, i) => (feeds[name] = this.tensors[i]));
    return feeds;
  }

  update(results) {
    this.tensors = this.names.map((name) => results[`new_${name}`]);
  }
}

/** One microphone stream: 320-sample frames in, the codes of the current bandwidth's graph out. */
export class Encoder {
  constructor(manifest, session) {
    this.manifest = manifest;
    this.session = session; // bandwidth (string) → the promise of its graph's session
    this.state = new StepState(manifest.encoder_state);
    this.hop = manifest.samples_per_frame;
  }

  async encode(frame, bandwidth) {
    const audio = new ort.Tensor("float32", frame, [1, 1, this.hop]);
    const results = await (await this.session(bandwidth)).run(this.state.feeds({ audio }));
    this.state.update(results);
    return Int32Array.from(results.codes.data, Number);
  }
}

/** One remote stream: a frame's codes (any codebook count) in, 320 samples out. */
export class Decoder {
  constructor(manifest, session) {
    this.session = session;
    this.state = new StepState(manifest.decoder_state);
  }

  async decode(codes) {
    const tensor = new ort.Tensor("int64", BigInt64Array.from(codes, BigInt), [1, codes.length]);
    const results = await this.session.run(this.state.feeds({ codes: tensor }));
    this.state.update(results);
    return results.audio.data;
  }
}
