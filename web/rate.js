// The sender's side of call/rate.py, for the page: receivers' RATE requests for the page's stream in, the
// bandwidth to encode at out. Each receiver's latest request is kept `keep` seconds and the slowest served:
// of the bandwidths offered up to the one picked in the menu, the highest whose packets fit. The page sends
// one-frame packets only, so it does not pack more frames a packet to fit (call/rate.py's `best_mode` does).

import { packedSize } from "./wire.js";

export const WS_FRAMING = 2; // bytes a websocket frame adds to a relay → client message (< 126 bytes, unmasked)

/** Codebooks a frame holds at `bandwidth` kbps, as the model config's `num_quantizers_for_bandwidth`. */
export const codebooksAt = (bandwidth, nbits, frameRate) => Math.max(1, Math.floor((bandwidth * 1000) / (nbits * frameRate)));

/** What one-frame packets of `codebooks` codes cost on a relay → client link, framing included (kbps). */
export const packetKbps = (codebooks, nbits, frameRate) => (8 * (2 + packedSize(codebooks, nbits) + WS_FRAMING) * frameRate) / 1000;

/** The highest of `bandwidths` (numbers, kbps) whose packets fit `kbps`; the lowest when none does. */
export function bestBandwidth(kbps, bandwidths, nbits, frameRate) {
  const fitting = bandwidths.filter((b) => packetKbps(codebooksAt(b, nbits, frameRate), nbits, frameRate) <= kbps);
  return fitting.length ? Math.max(...fitting) : Math.min(...bandwidths);
}

export class RateLimit {
  constructor(keep = 10) {
    this.keep = keep;
    this.requests = new Map(); // source → {kbps, when}
  }

  request(source, kbps, now) {
    this.requests.set(source, { kbps, when: now });
  }

  /** What the slowest receiver heard from in the last `keep` seconds can take; null: no limit. */
  limit(now) {
    for (const [source, { when }] of this.requests) if (now - when > this.keep) this.requests.delete(source);
    return this.requests.size ? Math.min(...[...this.requests.values()].map((r) => r.kbps)) : null;
  }
}
