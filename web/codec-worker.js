// The page's codec and network, off the main thread and off the audio thread: microphone frames (24 kHz,
// from the capture worklet's port) are encoded and sent; the peers' packets are parsed, put in a jitter
// buffer per stream, decoded on the playback worklet's demand and mixed (a sender's pauses played as comfort
// noise); a receiver's RATE request for the page's stream caps the bandwidth it encodes at. The main thread
// only draws.

import { configureRuntime, loadSession, Encoder, Decoder } from "./codec.js";
import { JitterBuffer, Concealer } from "./jitter.js";
import { feedPlayback } from "./playback-feed.js";
import { ComfortNoiseSource } from "./comfort-noise.js";
import { RateLimit, bestBandwidth } from "./rate.js";
import { reconnectDelay } from "./reconnect.js";
import * as wire from "./wire.js";

configureRuntime(self.location.href);

const now = () => (performance.timeOrigin + performance.now()) / 1000; // wall clock, s
const RECONNECT_FOR = 60; // s a lost relay is retried, as client.py's --reconnect-timeout
const MAX_BACKLOG = 4; // microphone frames (53 ms) that may wait for the encoder, as call/sender.py's 60 ms
let manifest = null, models = null, decoderSession = null;
let ourFingerprint = null; // the manifest's fingerprint as bytes, as a HEADER carries it
let offeredKbps = null; // the manifest's bandwidths as numbers
const encoderSessions = {}; // bandwidth → the promise of its graph's session, loaded on first use
const loadedEncoders = new Set(); // bandwidths whose session has loaded
let call = null;

/** Loads the manifest, the decoder and the encoder of `bandwidth` (the first offered where it is not). */
async function init(folder, bandwidth) {
  models = folder;
  manifest = await (await fetch(`${models}/manifest.json`)).json();
  const bandwidths = Object.keys(manifest.bandwidths);
  ourFingerprint = Uint8Array.from(manifest.fingerprint.match(/../g), (h) => parseInt(h, 16));
  offeredKbps = bandwidths.map(Number);
  if (!bandwidths.includes(bandwidth)) bandwidth = bandwidths[0];
  [decoderSession] = await Promise.all([loadSession(`${models}/${manifest.decoder}`), encoderSession(bandwidth)]);
  // A session's first run sets up its kernels (hundreds of ms in WASM): done now, not on the first remote
  // peer's first frame, where the stall would back its stream up and cost skipped frames.
  await new Decoder(manifest, decoderSession).decode(new Array(manifest.max_codebooks).fill(0));
  return { bandwidths, bandwidth, fingerprint: manifest.fingerprint };
}

function encoderSession(bandwidth) {
  if (!(bandwidth in manifest.bandwidths)) throw new Error(`no encoder graph for ${bandwidth} kbps`);
  return (encoderSessions[bandwidth] ??= loadSession(`${models}/${manifest.bandwidths[bandwidth]}`)
    .then((session) => (loadedEncoders.add(bandwidth), session)));
}

const frameRate = () => manifest.sample_rate / manifest.samples_per_frame;

/** A stream is opened only for a HEADER that is exactly what our model implies (as call/receiver.py). */
function checkHeader(header, peer) {
  const ours = { sampleRate: manifest.sample_rate, channels: manifest.channels, samplesPerFrame: manifest.samples_per_frame,
                 codebookNbits: manifest.codebook_nbits, maxCodebooks: manifest.max_codebooks };
  if (header.fingerprint.join() !== ourFingerprint.join()) throw new wire.ProtocolError(`peer ${peer} runs another model`);
  for (const [field, value] of Object.entries(ours)) {
    if (header[field] !== value) throw new wire.ProtocolError(`peer ${peer}'s ${field} is ${header[field]}, ours ${value}`);
  }
}

/** A remote peer's stream: its header, jitter buffer, concealer and decoder. */
class RemoteStream {
  constructor(peer, header) {
    this.peer = peer;
    this.header = header;
    this.jitter = new JitterBuffer(header.sampleRate / header.samplesPerFrame);
    this.concealer = new Concealer();
    this.decoder = new Decoder(manifest, decoderSession);
    this.comfortNoise = new ComfortNoiseSource(header.samplesPerFrame, { seed: header.streamId });
    this.newest = -1;
    this.decoded = 0;
    this.latency = null; // s, from the sender's clock at the frame's capture (its HEADER's start time) to playout
    this.estimate = null; // s, what the jitter buffer, the frame and the playback queue add (no network)
    this.ended = false;
    this.departed = false;
  }

  /** Its peer left: the stream plays out what it holds, then stops. */
  depart() {
    this.departed = true;
  }

  get finished() {
    return (this.ended || this.departed) && this.jitter.next !== null && this.jitter.next > this.jitter.newest;
  }

  /** The full index of a message at the 14-bit `wire` index covering `frames` frames; the newest moves past it. */
  place(wireIndex, frames) {
    const index = this.newest < 0 ? wireIndex : wire.unwrapIndex(wireIndex, this.newest);
    this.newest = Math.max(this.newest, index + frames - 1);
    return index;
  }

  accept(packet) {
    this.jitter.push(this.place(packet.index, packet.frames.length), packet.frames, now());
  }

  /** The sender is silent (version 2 streams only, as call/wire.py): its pause goes into the timeline. */
  acceptComfort(noise) {
    if (this.header.version < wire.DTX_VERSION) throw new wire.ProtocolError(`COMFORT_NOISE in a version-${this.header.version} stream`);
    this.jitter.pushComfort(this.place(noise.index, 1), noise.bandDb, now());
  }

  /** `{audio, decoded}` for this playout tick (`decoded`: it went through the decoder, not a frame of a
   * pause, which leaves the decoder and the concealer alone as call/receiver.py does), or null when this
   * stream has nothing due. */
  async tick(queued) {
    const due = this.jitter.playout(now());
    if (due === null) return null;
    if (due.comfort) return { audio: this.comfortNoise.frame(due.comfort), decoded: false };
    const [codes, gain] = this.concealer.next(due.codes);
    const audio = await this.decoder.decode(codes);
    if (due.codes !== null) {
      this.decoded++;
      const sent = this.header.startTimeUs / 1e6 + (due.index + 1) * this.jitter.period; // its last sample's capture
      this.latency = now() - sent + queued;
    }
    this.estimate = this.jitter.targetDelay + this.jitter.period + queued; // as the Python client's status line
    return { audio: gain === 1 ? audio : audio.map((x) => x * gain), decoded: true };
  }
}

class Call {
  constructor({ url, room, token, bandwidth }) {
    this.bandwidth = bandwidth;
    this.muted = false;
    this.peers = new Set();
    this.streams = new Map(); // peer → RemoteStream
    this.source = null; // peer whose messages follow (ROUTED)
    this.encoder = new Encoder(manifest, encoderSession);
    this.index = 0;
    this.streamId = Math.floor(Math.random() * 2 ** 31);
    this.rateLimit = new RateLimit(); // receivers' RATE requests for this stream
    this.startTimeUs = null;
    this.counters = { upBytes: 0, upMessages: 0, downBytes: 0, downMessages: 0, problems: 0, encodeMs: 0, decodeMs: 0, encoded: 0, decodedFrames: 0, droppedFrames: 0 };
    this.backlog = 0; // microphone frames waiting for the encoder
    this.level = 0;
    this.state = "connecting";
    this.error = null;
    this.started = now();
    this.playbackQueued = 0;
    this.encoding = Promise.resolve();
    this.address = `${url}/${encodeURIComponent(room)}`;
    this.protocols = ["encodec-stream"];
    if (token) this.protocols.push("bearer." + btoa(token).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", ""));
    this.leaving = false;
    this.lostAt = null; // when a working connection was lost (s), while it is being retried
    this.reconnects = 0;
    this.retries = 0;
    this.connect();
  }

  /** Opens the websocket. A handshake that fails at the start ends the call (a browser is not told why:
   * HTTP 401, 404, 503… look the same); a connection lost later is retried with backoff for
   * `RECONNECT_FOR` seconds, and the stream goes on where it was (same HEADER; what the microphone gave
   * meanwhile is not sent late), as the Python client does. */
  connect() {
    if (this.leaving) return;
    this.ws = new WebSocket(this.address, this.protocols);
    this.ws.binaryType = "arraybuffer";
    let opened = false;
    this.ws.onopen = () => {
      opened = true;
      this.state = "connected";
      this.error = null;
      if (this.lostAt !== null) this.reconnects++;
      this.lostAt = null;
      this.retries = 0;
      this.peers.clear(); // the relay names who is there, and resends the streams in progress
      this.streams.clear();
      this.source = null;
      if (this.startTimeUs !== null) this.send(this.header());
    };
    this.ws.onclose = (event) => {
      if (this.leaving) return void (this.state = "left");
      if (!opened && this.lostAt === null) {
        this.state = "disconnected";
        this.error ||= "the relay refused the room or token, or could not be reached";
        return;
      }
      this.lostAt ??= now();
      if (now() - this.lostAt > RECONNECT_FOR) {
        this.state = "disconnected";
        this.error = `lost the relay ${RECONNECT_FOR} s ago (${event.reason || `close code ${event.code}`})`;
        return;
      }
      this.state = "reconnecting";
      this.error = event.reason || `connection lost (close code ${event.code})`;
      setTimeout(() => this.connect(), reconnectDelay(this.retries++) * 1000);
    };
    this.ws.onmessage = (event) => this.receive(new Uint8Array(event.data));
  }

  header() {
    return wire.encodeHeader({
      fingerprint: ourFingerprint, sampleRate: manifest.sample_rate, channels: manifest.channels,
      samplesPerFrame: manifest.samples_per_frame, codebookNbits: manifest.codebook_nbits,
      maxCodebooks: manifest.max_codebooks, streamId: this.streamId, startTimeUs: this.startTimeUs,
    });
  }

  send(message) {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(message);
    this.counters.upBytes += message.length;
    this.counters.upMessages++;
  }

  /** A 320-sample microphone frame: level, encode (in order), send. A frame that finds more than
   * `MAX_BACKLOG` frames waiting for the encoder (a CPU too busy) is dropped: a call degrades, it never queues. */
  frame(samples) {
    let sum = 0;
    for (const x of samples) sum += x * x;
    this.level = Math.max(Math.sqrt(sum / samples.length), 0.95 * this.level); // a meter falls back over ~0.3 s
    if (this.muted) samples.fill(0);
    if (this.backlog >= MAX_BACKLOG) return void this.counters.droppedFrames++;
    this.backlog++;
    this.encoding = this.encoding.then(async () => {
      this.backlog--;
      if (this.ws.readyState !== WebSocket.OPEN) return;
      if (this.startTimeUs === null) {
        this.startTimeUs = Math.round(now() * 1e6 - 1e6 * samples.length / manifest.sample_rate);
        this.send(this.header());
      }
      const t0 = performance.now();
      const codes = await this.encoder.encode(samples, this.sendingBandwidth());
      this.counters.encodeMs += performance.now() - t0;
      this.counters.encoded++;
      this.codebooks = codes.length;
      this.send(wire.encodeAudio(this.index++, codes, manifest.codebook_nbits));
    });
  }

  /** The bandwidth to encode at: the menu's, capped by the receivers' RATE requests in force (as
   * call/sender.py's `limit_rate`); a capped bandwidth's graph is used once it has loaded. */
  sendingBandwidth() {
    const limit = this.rateLimit.limit(now());
    if (limit === null) return this.bandwidth;
    const offered = offeredKbps.filter((b) => b <= Number(this.bandwidth));
    const capped = String(bestBandwidth(limit, offered, manifest.codebook_nbits, frameRate()));
    if (loadedEncoders.has(capped)) return capped;
    encoderSession(capped); // loads meanwhile
    return this.bandwidth;
  }

  receive(data) {
    this.counters.downBytes += data.length;
    this.counters.downMessages++;
    try {
      let message = data;
      if (data[0] === wire.ROUTED) [this.source, message] = wire.unroute(data);
      if (message[0] === wire.JOINED || message[0] === wire.LEFT) {
        const [peer, present] = wire.parsePresence(message);
        if (present) this.peers.add(peer);
        else this.peers.delete(peer), this.streams.get(peer)?.depart();
        return;
      }
      if (message[0] === wire.RATE) { // about one stream, from any peer at any time: only its sender acts
        const request = wire.decodeRate(message);
        if (request.streamId === this.streamId) this.rateLimit.request(this.source, request.kbps, now());
        return;
      }
      const stream = this.streams.get(this.source);
      if (message[0] === wire.HEADER) {
        const header = wire.decodeHeader(message);
        checkHeader(header, this.source);
        if (!stream || stream.header.streamId !== header.streamId) this.streams.set(this.source, new RemoteStream(this.source, header));
      } else if (!stream) {
        throw new wire.ProtocolError("audio or END before the stream HEADER");
      } else if (message[0] === wire.END) {
        wire.decodeEnd(message);
        stream.ended = true;
      } else if (message[0] === wire.COMFORT_NOISE) {
        stream.acceptComfort(wire.decodeComfortNoise(message));
      } else {
        stream.accept(wire.decodeAudio(message, stream.header.codebookNbits, stream.header.maxCodebooks));
      }
    } catch (error) {
      this.counters.problems++; // a bad message from a peer is dropped and counted, never fatal
      this.lastProblem = error.message;
    }
  }

  /** One 320-sample playout tick: every stream's next frame, mixed. */
  async playout() {
    const mix = new Float32Array(manifest.samples_per_frame);
    for (const stream of this.streams.values()) {
      if (stream.finished) continue; // kept for the counters; a new HEADER from its peer replaces it
      const t0 = performance.now();
      const due = await stream.tick(this.playbackQueued);
      if (due === null) continue;
      if (due.decoded) {
        this.counters.decodeMs += performance.now() - t0;
        this.counters.decodedFrames++;
      }
      for (let i = 0; i < mix.length; i++) mix[i] += due.audio[i];
    }
    return mix;
  }

  leave() {
    this.leaving = true;
    this.send(wire.encodeEnd(this.index, this.index * manifest.samples_per_frame));
    this.ws.close(1000);
  }

  stats() {
    const seconds = Math.max(1e-3, now() - this.started);
    const c = this.counters;
    return {
      state: this.state, error: this.error, peers: [...this.peers], reconnects: this.reconnects,
      upKbps: (8 * c.upBytes) / seconds / 1000, downKbps: (8 * c.downBytes) / seconds / 1000,
      streamId: this.streamId, level: this.level, sentFrames: this.index, bandwidth: this.sendingBandwidth(), rateLimitKbps: this.rateLimit.limit(now()), droppedFrames: c.droppedFrames, lastProblem: this.lastProblem ?? null, codebooks: this.codebooks ?? null, muted: this.muted, problems: c.problems,
      encodeMsPerFrame: c.encoded ? c.encodeMs / c.encoded : null,
      decodeMsPerFrame: c.decodedFrames ? c.decodeMs / c.decodedFrames : null,
      streams: [...this.streams.values()].map((s) => ({
        peer: s.peer, decoded: s.decoded, ...s.jitter.stats,
        loss: s.jitter.lossRate, concealed: s.concealer.concealed, bufferMs: 1000 * s.jitter.targetDelay,
        latencyMs: s.latency === null ? null : 1000 * s.latency, estimateMs: s.estimate === null ? null : 1000 * s.estimate, ended: s.ended, departed: s.departed, finished: s.finished,
      })),
    };
  }
}

/** Test and benchmark entry points: a whole signal through fresh coders, timed per frame. */
async function encodeSignal(pcm, bandwidth) {
  const encoder = new Encoder(manifest, encoderSession), hop = manifest.samples_per_frame;
  const frames = Math.floor(pcm.length / hop), codes = [];
  const t0 = performance.now();
  for (let f = 0; f < frames; f++) codes.push(...(await encoder.encode(pcm.slice(f * hop, (f + 1) * hop), bandwidth)));
  return { codes: Int32Array.from(codes), frames, msPerFrame: (performance.now() - t0) / frames };
}

async function decodeCodes(codes, numCodebooks) {
  const decoder = new Decoder(manifest, decoderSession), hop = manifest.samples_per_frame;
  const frames = codes.length / numCodebooks, audio = new Float32Array(frames * hop);
  const t0 = performance.now();
  for (let f = 0; f < frames; f++) audio.set(await decoder.decode(codes.subarray(f * numCodebooks, (f + 1) * numCodebooks)), f * hop);
  return { audio, frames, msPerFrame: (performance.now() - t0) / frames };
}

function attachPorts(capture, playback) {
  capture.onmessage = ({ data }) => call?.frame(data);
  // The playback worklet asks for a frame each time its queue runs low: the audio clock drives playout.
  feedPlayback(playback, async (queued) => {
    if (!call) return null;
    call.playbackQueued = queued / manifest.sample_rate;
    return call.playout();
  }, manifest.samples_per_frame);
}

const handlers = {
  init: ({ models, bandwidth }) => init(models, bandwidth),
  join: (options) => ((call = new Call(options)), null),
  ports: ({ capture, playback }) => (attachPorts(capture, playback), null),
  bandwidth: async ({ bandwidth }) => (await encoderSession(bandwidth), (call.bandwidth = bandwidth), null),
  mute: ({ muted }) => ((call.muted = muted), null),
  leave: () => (call?.leave(), null),
  stats: () => call?.stats() ?? null,
  encodeSignal: ({ pcm, bandwidth }) => encodeSignal(pcm, bandwidth),
  decodeCodes: ({ codes, numCodebooks }) => decodeCodes(codes, numCodebooks),
};

self.onmessage = async ({ data }) => {
  try {
    self.postMessage({ id: data.id, result: await handlers[data.type](data) });
  } catch (error) {
    self.postMessage({ id: data.id, error: String(error?.message ?? error) });
  }
};
