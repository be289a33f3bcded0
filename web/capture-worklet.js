// Microphone → 24 kHz 320-sample frames → the codec worker's port. Runs on the audio thread: it only
// resamples and copies, never waits.

import { Resampler } from "./resampler.js";

class Capture extends AudioWorkletProcessor {
  constructor({ processorOptions }) {
    super();
    this.resampler = new Resampler(sampleRate, processorOptions.codecRate);
    this.hop = processorOptions.hop;
    this.frame = new Float32Array(this.hop);
    this.filled = 0;
    this.port.onmessage = ({ data }) => (this.worker = data); // the codec worker's end of a channel
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel || !this.worker) return true;
    for (const x of this.resampler.push(channel)) {
      this.frame[this.filled++] = x;
      if (this.filled === this.hop) {
        this.worker.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Float32Array(this.hop);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("capture", Capture);
