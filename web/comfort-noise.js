// Comfort noise, as call/comfort_noise.py: what the page plays while a sender is silent (DTX). White noise
// through a short linear-phase FIR whose power response follows the COMFORT_NOISE message's bands, scaled
// so that the noise has the bands' mean power (the level the sender measured); the filter keeps its history
// across frames, so frames join without a seam. The filter is call/comfort_noise.py's `noise_filter` to
// float precision; the noise is the page's own (a seeded generator), so its samples differ, not its level.

/** The FIR of `taps` (2 * taps - 1 coefficients) for bands of `bandDb` (dB full scale), as `noise_filter`. */
export function noiseFilter(bandDb, taps = 32) {
  const powers = bandDb.map((db) => 10 ** (db / 10));
  const bins = taps + 1, n = 2 * taps; // rfft bins of an n-point response
  // Bin 0 takes the first band; bins 1.. are split in equal parts as numpy's array_split does.
  const amplitude = [Math.sqrt(powers[0])];
  const base = Math.floor((bins - 1) / powers.length), extra = (bins - 1) % powers.length;
  powers.forEach((p, band) => {
    for (let i = 0; i < base + (band < extra ? 1 : 0); i++) amplitude.push(Math.sqrt(p));
  });
  // irfft of a real spectrum (zero phase), fftshift-ed, its first point dropped, times a Hann window.
  const response = new Float64Array(n - 1);
  let energy = 0;
  for (let m = 1; m < n; m++) {
    const t = (m + n / 2) % n;
    let x = amplitude[0] + amplitude[bins - 1] * (t % 2 ? -1 : 1);
    for (let k = 1; k < bins - 1; k++) x += 2 * amplitude[k] * Math.cos((2 * Math.PI * k * t) / n);
    const window = 0.5 - 0.5 * Math.cos((2 * Math.PI * (m - 1)) / (n - 2));
    response[m - 1] = (x / n) * window;
    energy += response[m - 1] ** 2;
  }
  const mean = powers.reduce((a, b) => a + b, 0) / powers.length;
  const scale = energy > 0 ? Math.sqrt(mean / energy) : 1;
  return response.map((x) => x * scale);
}

/** Standard normal numbers from a 32-bit seed (mulberry32, Box–Muller): reproducible per stream. */
function gaussian(seed) {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297; // in (0, 1): the logarithm below stays finite
  };
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** Frames of comfort noise for one stream, `hop` samples at a time. */
export class ComfortNoiseSource {
  constructor(hop, { taps = 32, seed = 0 } = {}) {
    this.hop = hop;
    this.taps = taps;
    this.random = gaussian(seed);
    this.history = new Float64Array(2 * taps - 2);
    this.bands = null;
    this.filter = null;
    this.frames = 0;
  }

  /** The next frame (Float32Array of `hop`) at the level and spectrum of `bandDb`. */
  frame(bandDb) {
    if (this.bands?.join() !== bandDb.join()) [this.bands, this.filter] = [bandDb, noiseFilter(bandDb, this.taps)];
    const held = this.history.length;
    const white = new Float64Array(held + this.hop);
    white.set(this.history);
    for (let i = held; i < white.length; i++) white[i] = this.random();
    this.history = white.slice(-held);
    const out = new Float32Array(this.hop), filter = this.filter; // symmetric: convolution is correlation
    for (let i = 0; i < this.hop; i++) {
      let sum = 0;
      for (let k = 0; k < filter.length; k++) sum += filter[k] * white[i + k];
      out[i] = sum;
    }
    this.frames++;
    return out;
  }
}
