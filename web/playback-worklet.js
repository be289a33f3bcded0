// The codec worker's mixed 24 kHz frames → the speaker. The audio clock drives the call's playout: when
// fewer than `low` samples are queued, it asks the worker for one more frame (one request in flight at a
// time); a queue that runs dry plays silence rather than waiting.

import { Resampler } from "./resampler.js";

class Playback extends AudioWorkletProcessor {
  constructor({ processorOptions }) {
    super();
    this.resampler = new Resampler(processorOptions.codecRate, sampleRate);
    this.ratio = sampleRate / processorOptions.codecRate;
    this.low = 2 * processorOptions.hop * this.ratio; // two frames queued, at the context's rate
    this.queue = [];
    this.queued = 0;
    this.offset = 0;
    this.asked = false;
    this.port.onmessage = ({ data }) => {
      this.worker = data;
      this.worker.onmessage = ({ data: frame }) => {
        const samples = this.resampler.push(frame);
        this.queue.push(samples);
        this.queued += samples.length;
        this.asked = false;
      };
    };
  }

  process(_, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length && this.queue.length; ) {
      const head = this.queue[0], n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.queued -= n;
      if (this.offset === head.length) this.queue.shift(), (this.offset = 0);
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.worker && !this.asked && this.queued < this.low) {
      this.asked = true;
      this.worker.postMessage({ queued: this.queued / this.ratio });
    }
    return true;
  }
}

registerProcessor("playback", Playback);
