// Jitter buffer and loss concealment, a small version of call/jitter.py and call/concealment.py: frames
// back in order, a target delay that starts at 80 ms and follows the spread of arrival times (a passed
// stall forgotten after a calm second), a missing
// frame declared lost once a later one is due, delay no longer needed skipped (at once for a backlog far
// beyond the target, else after half a second whose lowest fill exceeded it), repeated codes fading out for
// a lost frame.

export class JitterBuffer {
  constructor(frameRate, { initialDelay = 0.08, minDelay = 0.02, maxDelay = 0.5, window = 200 } = {}) {
    this.period = 1 / frameRate;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.window = window;
    this.recent = Math.max(20, Math.round(frameRate)); // a second of transits
    this.levelWindow = Math.round(frameRate / 2); // playout ticks over which the lowest fill is watched
    this.levelFloor = Infinity;
    this.levelTicks = 0;
    this.targetDelay = initialDelay;
    this.frames = new Map(); // index → codes
    this.transits = []; // arrival time − frame time (s), the last `window`
    this.next = null; // next index to play
    this.newest = -1;
    this.stats = { received: 0, lost: 0, late: 0, duplicate: 0, stretched: 0, skipped: 0 };
  }

  /** A packet's frames (codes of each) arrived at `now` (s), the first of them frame `index`. */
  push(index, frames, now) {
    frames.forEach((codes, offset) => {
      const i = index + offset;
      if (this.next !== null && i < this.next) return void this.stats.late++;
      if (this.frames.has(i)) return void this.stats.duplicate++;
      this.frames.set(i, codes);
      this.stats.received++;
      this.newest = Math.max(this.newest, i);
      this.transits.push(now - i * this.period);
    });
    this.transits.splice(0, this.transits.length - this.window);
    this._forgetPassedStall(); // once a packet: a flood of packets costs a sort each, not one a frame
    if (this.transits.length >= 20) this.targetDelay = Math.min(this.maxDelay, Math.max(this.minDelay, this._spread() + this.period));
  }

  /** Transits' 95th percentile above their minimum (s): the jitter the target must cover. */
  _spread() {
    const sorted = [...this.transits].sort((a, b) => a - b);
    return sorted[Math.floor(0.95 * (sorted.length - 1))] - sorted[0];
  }

  /** As call/jitter.py: once a second of packets spread less than the window's 95th percentile, the
   * window's high tail is a stall that has passed; only those recent transits are kept. */
  _forgetPassedStall() {
    const recent = this.transits.slice(-this.recent);
    if (this.transits.length <= this.recent) return;
    if (Math.max(...recent) - Math.min(...recent) < this._spread()) this.transits = recent;
  }

  get buffered() {
    return this.next === null ? this.frames.size : this.newest - this.next + 1;
  }

  /** One playout tick: `{index, codes}`, codes null for a lost frame or, with index -1, for a stretch (the
   * buffer ran dry: concealment that consumes no frame, so the delay grows); null before the stream starts. */
  playout() {
    if (this.next === null) {
      if (!this.frames.size || this.buffered * this.period < this.targetDelay) return null;
      this.next = Math.min(...this.frames.keys());
    }
    const target = Math.ceil(this.targetDelay / this.period);
    let excess = 0;
    if (this.buffered > 2 * target + 4) excess = this.buffered - target - 2; // a burst, a stall behind us: at once
    this.levelFloor = Math.min(this.levelFloor, this.buffered);
    if (++this.levelTicks >= this.levelWindow) {
      // Half a second in which even the lowest fill exceeded the target: that delay is no longer needed.
      excess = Math.max(excess, this.levelFloor - target - 1);
      this.levelFloor = Infinity;
      this.levelTicks = 0;
    }
    for (; excess > 0; excess--) this._take(true);
    if (this.next > this.newest) {
      this.stats.stretched++;
      return { index: -1, codes: null };
    }
    return this._take(false);
  }

  _take(skipping) {
    const index = this.next++;
    const codes = this.frames.get(index) ?? null;
    this.frames.delete(index);
    if (codes === null) this.stats.lost++;
    else if (skipping) this.stats.skipped++;
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
