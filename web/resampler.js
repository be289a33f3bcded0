// Band-limited resampling between the audio context's rate and the codec's 24 kHz, one block at a time:
// a Hann-windowed sinc (16 taps a side), the cut-off at the lower rate's Nyquist; the input's last taps are
// kept between blocks, so a stream resamples the same whatever its block sizes.

const TAPS = 16;

export class Resampler {
  constructor(fromRate, toRate) {
    this.step = fromRate / toRate; // input samples per output sample
    this.cutoff = Math.min(1, toRate / fromRate);
    this.history = new Float32Array(2 * TAPS); // the input before this block
    this.position = TAPS; // next output's position, in input samples, counted from history[0]
  }

  /** The output samples `input` completes (a new Float32Array). */
  push(input) {
    const buffer = new Float32Array(this.history.length + input.length);
    buffer.set(this.history);
    buffer.set(input, this.history.length);
    const out = [];
    while (this.position + TAPS < buffer.length) {
      const centre = Math.floor(this.position), frac = this.position - centre;
      let sum = 0;
      for (let k = -TAPS + 1; k <= TAPS; k++) {
        const x = k - frac;
        const window = 0.5 + 0.5 * Math.cos((Math.PI * x) / (TAPS + 1));
        const arg = Math.PI * x * this.cutoff;
        sum += buffer[centre + k] * window * this.cutoff * (arg === 0 ? 1 : Math.sin(arg) / arg);
      }
      out.push(sum);
      this.position += this.step;
    }
    const keep = 2 * TAPS;
    const drop = buffer.length - keep;
    this.history = buffer.slice(drop);
    this.position -= drop;
    return Float32Array.from(out);
  }
}
