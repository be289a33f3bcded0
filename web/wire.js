// The wire format of docs/PROTOCOL.md (versions 1 and 2), as call/wire.py writes and reads it: what the
// page sends (HEADER, one-frame audio packets, END) and everything the relay and the Python peers send it
// (version 2: COMFORT_NOISE in a sender's pauses; RATE, a receiver's request). The page sends neither of
// those two yet; their encoders keep the format checked both ways against Python (tests/test_web_modules.py).

export const VERSION = 1; // what the page sends: it has no DTX
export const DTX_VERSION = 2; // a stream that may hold COMFORT_NOISE
export const SUPPORTED_VERSIONS = [VERSION, DTX_VERSION];
export const HEADER = 0x01, END = 0x02, ROUTED = 0x03, LEFT = 0x04, JOINED = 0x05, COMFORT_NOISE = 0x06, RATE = 0x07;
export const AUDIO_FLAG = 0x80, MULTI_FLAG = 0x40, UNIFORM_FLAG = 0x80;
export const INDEX_MODULUS = 1 << 14;
export const FINGERPRINT_SIZE = 8;
export const MAX_NOISE_BANDS = 16, NOISE_FLOOR_DB = 127;

export class ProtocolError extends Error {}

export function writeVarint(value, out) {
  // Numbers here reach 2^53 at most (µs since the epoch): arithmetic, not 32-bit shifts.
  if (!(value >= 0) || !Number.isSafeInteger(value)) throw new RangeError(`varint must be a non-negative integer, got ${value}`);
  do {
    const low = value % 128;
    value = Math.floor(value / 128);
    out.push(value ? low | 0x80 : low);
  } while (value);
  return out;
}

export function readVarint(data, pos, maxBytes = 10) {
  let value = 0, scale = 1;
  for (let i = 0; i < maxBytes; i++) {
    if (pos + i >= data.length) throw new ProtocolError("truncated varint");
    const byte = data[pos + i];
    value += (byte & 0x7f) * scale;
    if (!(byte & 0x80)) return [value, pos + i + 1];
    scale *= 128;
  }
  throw new ProtocolError("varint too long");
}

export const packedSize = (count, nbits) => Math.ceil((count * nbits) / 8);

/** Codes (any iterable of integers) at `nbits` bits each, MSB first, the last byte padded with zeros. */
export function packCodes(codes, nbits, out) {
  let acc = 0, held = 0;
  for (const code of codes) {
    if (code < 0 || code >= 1 << nbits) throw new RangeError(`codes must lie in [0, ${1 << nbits})`);
    acc = (acc << nbits) | code;
    held += nbits;
    while (held >= 8) {
      held -= 8;
      out.push((acc >> held) & 0xff);
    }
    acc &= (1 << held) - 1;
  }
  if (held) out.push((acc << (8 - held)) & 0xff);
  return out;
}

export function unpackCodes(payload, count, nbits) {
  if (payload.length !== packedSize(count, nbits)) throw new ProtocolError(`expected ${packedSize(count, nbits)} payload bytes for ${count} codes`);
  const codes = new Int32Array(count);
  let acc = 0, held = 0, pos = 0;
  for (let i = 0; i < count; i++) {
    while (held < nbits) {
      acc = ((acc << 8) | payload[pos++]) & 0xffffff;
      held += 8;
    }
    held -= nbits;
    codes[i] = (acc >> held) & ((1 << nbits) - 1);
  }
  if (acc & ((1 << held) - 1)) throw new ProtocolError("non-zero padding bits");
  return codes;
}

/** The HEADER of a stream: `fingerprint` a Uint8Array(8), times in µs since the epoch, `version` 1 unless given. */
export function encodeHeader(h) {
  if (h.fingerprint.length !== FINGERPRINT_SIZE) throw new RangeError("fingerprint must be 8 bytes");
  const out = [HEADER, h.version ?? VERSION, ...h.fingerprint];
  writeVarint(h.sampleRate, out);
  out.push(h.channels);
  writeVarint(h.samplesPerFrame, out);
  out.push(h.codebookNbits, h.maxCodebooks);
  writeVarint(h.streamId, out);
  writeVarint(h.startTimeUs, out);
  return new Uint8Array(out);
}

export function decodeHeader(data) {
  if (data.length < 2 || data[0] !== HEADER) throw new ProtocolError("not a HEADER message");
  if (!SUPPORTED_VERSIONS.includes(data[1])) {
    throw new ProtocolError(`unsupported protocol version ${data[1]} (this page speaks ${SUPPORTED_VERSIONS.join(", ")})`);
  }
  let pos = 2 + FINGERPRINT_SIZE;
  if (data.length < pos) throw new ProtocolError("truncated HEADER");
  const fingerprint = data.slice(2, pos);
  let sampleRate, samplesPerFrame, streamId, startTimeUs;
  [sampleRate, pos] = readVarint(data, pos, 5);
  if (pos >= data.length) throw new ProtocolError("truncated HEADER");
  const channels = data[pos];
  [samplesPerFrame, pos] = readVarint(data, pos + 1, 5);
  if (pos + 2 > data.length) throw new ProtocolError("truncated HEADER");
  const codebookNbits = data[pos], maxCodebooks = data[pos + 1];
  [streamId, pos] = readVarint(data, pos + 2, 5);
  [startTimeUs, pos] = readVarint(data, pos, 10);
  if (pos !== data.length) throw new ProtocolError("trailing bytes after HEADER");
  if (codebookNbits < 8 || codebookNbits > 16 || maxCodebooks < 1 || channels < 1 || !sampleRate || !samplesPerFrame) {
    throw new ProtocolError("HEADER parameters out of range");
  }
  return { fingerprint, sampleRate, channels, samplesPerFrame, codebookNbits, maxCodebooks, streamId, startTimeUs, version: data[1] };
}

/** A one-frame audio packet (M = 0): 2 bytes of header, then the codes. */
export function encodeAudio(index, codes, nbits) {
  const wire = index % INDEX_MODULUS;
  return new Uint8Array(packCodes(codes, nbits, [AUDIO_FLAG | (wire >> 8), wire & 0xff]));
}

/** `{index (14-bit wire value), frames: [Int32Array of codes, …]}`, with call/wire.py's checks. */
export function decodeAudio(data, nbits, maxCodebooks) {
  if (data.length < 3 || !(data[0] & AUDIO_FLAG)) throw new ProtocolError("not an audio packet (or truncated)");
  const index = ((data[0] & 0x3f) << 8) | data[1];
  let counts, pos;
  if (!(data[0] & MULTI_FLAG)) {
    pos = 2;
    const count = Math.floor(((data.length - 2) * 8) / nbits);
    if (count < 1 || count > maxCodebooks || packedSize(count, nbits) !== data.length - 2) {
      throw new ProtocolError(`a ${data.length - 2}-byte payload is no whole frame`);
    }
    counts = [count];
  } else {
    const layout = data[2], n = (layout & 0x7f) + 1;
    if (layout & UNIFORM_FLAG) {
      if (data.length < 4) throw new ProtocolError("truncated packet layout");
      counts = new Array(n).fill(data[3]);
      pos = 4;
    } else {
      if (data.length < 3 + n) throw new ProtocolError("truncated packet layout");
      counts = Array.from(data.subarray(3, 3 + n));
      pos = 3 + n;
    }
    if (Math.min(...counts) < 1 || Math.max(...counts) > maxCodebooks) throw new ProtocolError("codebook count out of range");
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const codes = unpackCodes(data.subarray(pos), total, nbits);
  const frames = [];
  let start = 0;
  for (const count of counts) {
    frames.push(codes.subarray(start, start + count));
    start += count;
  }
  return { index, frames };
}

export function encodeEnd(nFrames, nSamples) {
  return new Uint8Array(writeVarint(nSamples, writeVarint(nFrames, [END])));
}

export function decodeEnd(data) {
  if (!data.length || data[0] !== END) throw new ProtocolError("not an END message");
  let nFrames, nSamples, pos;
  [nFrames, pos] = readVarint(data, 1, 6);
  [nSamples, pos] = readVarint(data, pos, 8);
  if (pos !== data.length) throw new ProtocolError("trailing bytes after END");
  return { nFrames, nSamples };
}

/** COMFORT_NOISE: the sender is silent from frame `index` on; `bandDb` the background's power per band (dB full scale). */
export function encodeComfortNoise(index, bandDb) {
  if (bandDb.length < 1 || bandDb.length > MAX_NOISE_BANDS) throw new RangeError(`comfort noise has 1..${MAX_NOISE_BANDS} bands`);
  const wire = index % INDEX_MODULUS;
  // Python's round() rounds halves to even; band levels on the page come from the wire, whole already.
  return new Uint8Array([COMFORT_NOISE, wire >> 8, wire & 0xff, ...bandDb.map((db) => Math.min(NOISE_FLOOR_DB, Math.max(0, Math.round(-db))))]);
}

/** `{index (14-bit wire value), bandDb}`, with call/wire.py's checks. */
export function decodeComfortNoise(data) {
  if (!data.length || data[0] !== COMFORT_NOISE) throw new ProtocolError("not a COMFORT_NOISE message");
  if (data.length < 4 || data.length > 3 + MAX_NOISE_BANDS) {
    throw new ProtocolError(`COMFORT_NOISE needs 1..${MAX_NOISE_BANDS} bands, got ${data.length - 3} bytes`);
  }
  const levels = data.subarray(3);
  if (data[1] >> 6 || Math.max(...levels) > NOISE_FLOOR_DB) throw new ProtocolError("COMFORT_NOISE field out of range");
  return { index: (data[1] << 8) | data[2], bandDb: Array.from(levels, (level) => -level) };
}

/** RATE: a receiver asks the sender of stream `streamId` to send at most `kbps` (tenths on the wire). */
export function encodeRate(streamId, kbps) {
  return new Uint8Array(writeVarint(Math.max(1, Math.round(10 * kbps)), writeVarint(streamId, [RATE])));
}

export function decodeRate(data) {
  if (!data.length || data[0] !== RATE) throw new ProtocolError("not a RATE message");
  const [streamId, pos] = readVarint(data, 1, 5);
  const [tenths, end] = readVarint(data, pos, 4);
  if (end !== data.length || tenths === 0) throw new ProtocolError("malformed RATE message");
  return { streamId, kbps: tenths / 10 };
}

/** `[source peer, inner message]` of a ROUTED envelope. */
export function unroute(data) {
  if (!data.length || data[0] !== ROUTED) throw new ProtocolError("not a ROUTED message");
  const [source, pos] = readVarint(data, 1, 5);
  const inner = data.subarray(pos);
  if (!inner.length || inner[0] === ROUTED) throw new ProtocolError("empty or nested ROUTED envelope");
  return [source, inner];
}

/** `[peer, present]` of a JOINED or LEFT message. */
export function parsePresence(data) {
  if (!data.length || (data[0] !== JOINED && data[0] !== LEFT)) throw new ProtocolError("not a JOINED or LEFT message");
  const [peer, pos] = readVarint(data, 1, 5);
  if (pos !== data.length) throw new ProtocolError("trailing bytes after a presence message");
  return [peer, data[0] === JOINED];
}

/** The full frame index congruent to `wire` (mod 2^14) nearest `reference`. */
export function unwrapIndex(wire, reference) {
  let delta = (((wire - reference) % INDEX_MODULUS) + INDEX_MODULUS) % INDEX_MODULUS;
  if (delta >= INDEX_MODULUS / 2) delta -= INDEX_MODULUS;
  return reference + delta;
}
