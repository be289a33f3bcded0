// Jitter buffer and loss concealment, a small version of call/jitter.py and call/concealment.py: frames
// back in order, a target delay that starts at 80 ms and follows the spread of arrival times, a missing
// frame declared lost once a later one is due, a backlog far beyond the target skipped at once, repeated
// codes fading out for a lost frame.

export class JitterBuffer {
  constructor(frameRate, { initialDelay = 0.08, minDelay = 0.02, maxDelay = 0.5, window = 200 } = {}) {
    this.period = 1 / frameRate;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.window = window;
    this.targetDelay = initialDelay;
    this.frames = new Map(); // index → codes
    this.transits = []; // arrival time − frame time (s), the last `window`
    this.next = null; // next index to play
    this.newest = -1;
    this.stats = { received: 0, lost: 0, late: 0, duplicate: 0, stretched: 0, skipped: 0 };
  }

  /** A frame arrived at `now` (s). */
  push(index, codes, now) {
    if (this.next !== null && index < this.next) return void this.stats.late++;
    if (this.frames.has(index)) return void this.stats.duplicate++;
    this.frames.set(index, codes);
    this.stats.received++;
    this.newest = Math.max(this.newest, index);
    this.transits.push(now - index * this.period);
    if (this.transits.length > this.window) this.transits.shift();
    const sorted = [...this.transits].sort((a, b) => a - b);
    const spread = sorted[Math.floor(0.95 * (sorted.length - 1))] - sorted[0];
    if (this.transits.length >= 20) this.targetDelay = Math.min(this.maxDelay, Math.max(this.minDelay, spread + this.period));
  }

  get buffered() {
    return this.next === null ? this.frames.size : this.newest - this.next + 1;
  }

  /** One playout tick: `{index, codes}` (codes null for a lost frame), or null to stretch (nothing due). */
  playout() {
    if (this.next === null) {
      if (!this.frames.size || this.buffered * this.period < this.targetDelay) return null;
      this.next = Math.min(...this.frames.keys());
    }
    const target = Math.ceil(this.targetDelay / this.period);
    if (this.buffered > 2 * target + 4) {
      // Far more queued than the target (a burst, a stall behind us): that delay goes at once.
      for (let excess = this.buffered - target - 2; excess > 0; excess--) this._take(true);
    }
    if (this.next > this.newest) {
      this.stats.stretched++;
      return null;
    }
    return this._take(false);
  }

  _take(skipping) {
    const index = this.next++;
    const codes = this.frames.get(index) ?? null;
    this.frames.delete(index);
    if (skipping) this.stats.skipped++;
    else if (codes === null) this.stats.lost++;
    return { index, codes };
  }

  get lossRate() {
    const expected = this.stats.received + this.stats.lost;
    return expected ? this.stats.lost / expected : 0;
  }
}

/** Codes for each frame and the gain of its audio: a lost frame repeats the last codes, fading out. */
export class Concealer {
  constructor(fadeFrames = 6) {
    this.fadeFrames = fadeFrames;
    this.last = null;
    this.run = 0;
    this.concealed = 0;
  }

  next(codes) {
    if (codes !== null) {
      this.last = codes;
      this.run = 0;
      return [codes, 1];
    }
    this.concealed++;
    if (this.last === null) return [new Int32Array(1), 0];
    this.run++;
    return [this.last, Math.max(0, 1 - (this.run - 1) / this.fadeFrames)];
  }
}
