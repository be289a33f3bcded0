// Jitter buffer and loss concealment, a small version of call/jitter.py and call/concealment.py: frames
// back in order, a target delay that starts at two frames and follows the spread of arrival times (its 95th
// percentile + 3 ms, no fixed floor, as call/jitter.py; a passed stall forgotten after a calm second), a missing
// frame declared lost once a later one is due, delay no longer needed skipped (at once for a backlog far
// beyond the target, else after half a second whose lowest fill exceeded it), repeated codes fading out for
// a lost frame. A sender's pauses (COMFORT_NOISE, protocol version 2) as call/jitter.py keeps them: each
// message timed as its frame would be, the frames of a pause not sent and played as comfort noise (counted
// apart, never lost) at the pace speech had, until the first frame that comes after them.

export class JitterBuffer {
  constructor(frameRate, { initialDelay = 2 / frameRate, minDelay = 0, maxDelay = 0.5, window = 200, margin = 0.003 } = {}) {
    this.period = 1 / frameRate;
    this.margin = margin; // the scatter of the receiving side's own wake-ups, which no transit shows
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
    this.pauses = []; // {index, bandDb, resumed}: the sender's pauses not yet played out, the last `maxPauses`
    this.maxPauses = 16;
    this.stats = { received: 0, lost: 0, late: 0, duplicate: 0, stretched: 0, skipped: 0, comfort: 0 };
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
      this._endsPause(i);
      this.transits.push(now - i * this.period);
    });
    this._timed();
  }

  /** The sender fell silent at frame `index` (or updates its background) at `now`: every frame from there
   * that has not come when its turn comes is comfort noise of `bandDb`, until audio resumes. */
  pushComfort(index, bandDb, now) {
    const last = this.pauses.at(-1);
    if (last && last.resumed === null && index >= last.index) last.bandDb = bandDb; // the same pause, a new background
    else if (!last || (last.resumed !== null && index >= last.resumed)) this.pauses.push({ index, bandDb, resumed: null });
    else return; // older than the pause known: nothing to add
    this.pauses.splice(0, this.pauses.length - this.maxPauses);
    this.transits.push(now - index * this.period); // sent when its frame was encoded: it times the stream
    this._timed();
  }

  /** After new transits: the window bounded, a passed stall forgotten, the target updated. Once a message:
   * a flood of packets costs a sort each, not one a frame. */
  _timed() {
    this.transits.splice(0, this.transits.length - this.window);
    this._forgetPassedStall();
    if (this.transits.length >= 20) this.targetDelay = Math.min(this.maxDelay, Math.max(this.minDelay, this._spread() + this.margin));
  }

  /** The latest pause that started at or before frame `index`. */
  _pauseAt(index) {
    return this.pauses.findLast((pause) => pause.index <= index);
  }

  /** Frame `index` came: the pause it lies in, if any, ended at it at the latest. */
  _endsPause(index) {
    const pause = this._pauseAt(index);
    if (pause && (pause.resumed === null || index < pause.resumed)) pause.resumed = index;
  }

  /** The band powers frame `index` plays if it has not come: those of the pause it lies in, or null. */
  _comfortFor(index) {
    while (this.pauses.length && this.pauses[0].resumed !== null && this.pauses[0].resumed <= index) this.pauses.shift();
    const pause = this._pauseAt(index);
    return pause && (pause.resumed === null || index < pause.resumed) ? pause.bandDb : null;
  }

  /** Frame `index` would have come by `now` on the fastest path the stream has shown: in a pause, playout
   * keeps the pace speech had, neither running ahead of the sender nor drifting later. */
  _due(index, now) {
    return this.transits.length > 0 && now >= index * this.period + Math.min(...this.transits);
  }

  /** Transits' 95th percentile above their minimum (s): the jitter the target must cover. */
  _spread() {
    const sorted = [...this.transits].sort((a, b) => a - b);
    return sorted[Math.floor(0.95 * (sorted.length - 1))] - sorted[0];
  }

  /** As call/jitter.py: once a second of packets spread less than the window's 95th percentile, the
   * window's high tail is a stall that has passed; only those recent transits are kept. */
  _forgetPassedStall() {
    if (this.transits.length <= this.recent) return;
    const recent = this.transits.slice(-this.recent);
    if (Math.max(...recent) - Math.min(...recent) < this._spread()) this.transits = recent;
  }

  get buffered() {
    return this.next === null ? this.frames.size : this.newest - this.next + 1;
  }

  /** One playout tick at `now` (s): `{index, codes}`, codes null for a lost frame or, with index -1, for a
   * stretch (the buffer ran dry: concealment that consumes no frame, so the delay grows); in a pause
   * `{index, codes: null, comfort}` with the band powers (dB) to play, index -1 while the pause's next
   * frame is not due yet; null before the stream starts. */
  playout(now) {
    if (this.next === null) {
      const start = this.frames.size ? Math.min(...this.frames.keys()) : this.pauses[0]?.index;
      if (start === undefined) return null;
      // A stream that starts in a pause fills its target delay as one that starts with frames does.
      const filled = this.frames.size ? this.buffered * this.period : now - start * this.period - Math.min(...this.transits);
      if (filled < this.targetDelay) return null;
      this.next = start;
    }
    const comfort = this.frames.has(this.next) ? null : this._comfortFor(this.next);
    if (comfort !== null) {
      if (!this.frames.size && !this._due(this.next, now)) {
        this.stats.stretched++;
        return { index: -1, codes: null, comfort };
      }
      this.stats.comfort++;
      return { index: this.next++, codes: null, comfort };
    }
    // The frame due and the whole frames of jitter beyond it, as call/jitter.py keeps them.
    const target = 1 + Math.floor(Math.max(0, this.targetDelay - this.margin) / this.period + 1e-9);
    let excess = 0;
    if (this.buffered > 2 * target + 4) excess = this.buffered - target - 2; // a burst, a stall behind us: at once
    this.levelFloor = Math.min(this.levelFloor, this.buffered);
    if (++this.levelTicks >= this.levelWindow) {
      // Half a second in which even the lowest fill exceeded the target: that delay is no longer needed.
      excess = Math.max(excess, this.levelFloor - target);
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
    if (codes === null && this._comfortFor(index) === null) this.stats.lost++;
    else if (skipping) this.stats.skipped++; // (a frame of a pause skipped to cut the delay is no loss)
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
