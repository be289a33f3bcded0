// The page: join form, audio graph (microphone → capture worklet → codec worker → playback worklet →
// speaker) and the counters. The codec and the network run in the worker; this thread only draws.

import { CodecWorker } from "./codec-client.js";

const $ = (id) => document.getElementById(id);
const codec = new CodecWorker();
const models = new URL("models", location.href).href;
let audio = null, microphone = null, timer = null, muted = false;

const ready = codec.request("init", { models, bandwidth: "6" }).then(({ bandwidths, bandwidth }) => {
  for (const bw of bandwidths) $("bandwidth").add(new Option(`${bw} kbps`, bw, bw === bandwidth, bw === bandwidth));
  $("state").textContent = "ready";
  $("join-button").disabled = false;
}).catch((error) => showError(`the codec did not load: ${error.message}`));

function showError(text) {
  $("error").textContent = text;
  if (text) console.warn(text);
}

async function join(event) {
  event.preventDefault();
  await ready;
  showError("");
  $("join-button").disabled = true;
  try {
    microphone = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
  } catch (error) {
    $("join-button").disabled = false;
    return showError(`no microphone: ${error.message} (browsers give it only to https:// pages and localhost)`);
  }
  audio = new AudioContext({ latencyHint: "interactive" });
  const options = { processorOptions: { codecRate: 24000, hop: 320 } };
  await audio.audioWorklet.addModule("capture-worklet.js");
  await audio.audioWorklet.addModule("playback-worklet.js");
  const capture = new AudioWorkletNode(audio, "capture", options);
  const playback = new AudioWorkletNode(audio, "playback", { ...options, outputChannelCount: [1] });
  const up = new MessageChannel(), down = new MessageChannel();
  capture.port.postMessage(up.port1, [up.port1]);
  playback.port.postMessage(down.port1, [down.port1]);
  await codec.request("ports", { capture: up.port2, playback: down.port2 }, [up.port2, down.port2]);
  audio.createMediaStreamSource(microphone).connect(capture);
  playback.connect(audio.destination);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  await codec.request("join", { url: `${scheme}//${location.host}`, room: $("room").value, token: $("token").value, bandwidth: $("bandwidth").value });
  await audio.resume();
  $("mute").disabled = $("leave").disabled = false;
  timer = setInterval(refresh, 250);
}

/** The call is over (left, or the relay refused or dropped it): free the microphone, ready to join again. */
async function stop() {
  clearInterval(timer);
  timer = null;
  microphone?.getTracks().forEach((track) => track.stop());
  await audio?.close();
  microphone = audio = null;
  muted = false;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  $("mute").disabled = $("leave").disabled = true;
  $("join-button").disabled = false;
}

async function leave() {
  await codec.request("leave");
  await refresh();
  await stop();
}

const ms = (value) => (value === null ? "–" : `${value.toFixed(value < 10 ? 2 : 0)} ms`);

async function refresh() {
  const s = await codec.request("stats");
  window.callStats = s; // for tests and the curious
  if (!s) return;
  $("state").textContent = s.state;
  if (s.error) showError(s.error);
  if (s.state === "disconnected" && timer) await stop();
  $("level").style.width = `${Math.min(100, 300 * s.level)}%`;
  const asked = s.rateLimitKbps === null ? "" : ` (a peer asks for ≤ ${s.rateLimitKbps} kbps)`;
  $("up").textContent = `${s.upKbps.toFixed(1)} kbps, ${s.sentFrames} frames at ${s.bandwidth} kbps${asked}${s.droppedFrames ? `, ${s.droppedFrames} dropped (CPU busy)` : ""}`;
  $("down").textContent = `${s.downKbps.toFixed(1)} kbps${s.problems ? `, ${s.problems} bad messages dropped (last: ${s.lastProblem})` : ""}`;
  $("codec").textContent = `encode ${ms(s.encodeMsPerFrame)}, decode ${ms(s.decodeMsPerFrame)} a 13.3 ms frame`;
  $("peers").textContent = s.peers.length ? s.peers.map((p) => `#${p}`).join(", ") : "nobody else yet";
  $("streams").replaceChildren(...s.streams.map((stream) => {
    const row = document.createElement("tr");
    for (const text of [`#${stream.peer}${stream.ended ? " (ended)" : ""}`, stream.decoded, stream.comfort, `${(100 * stream.loss).toFixed(1)} %`, `~${ms(stream.estimateMs)} (clock ${ms(stream.latencyMs)})`, ms(stream.bufferMs)]) {
      row.insertCell().textContent = text;
    }
    return row;
  }));
}

$("join").addEventListener("submit", join);
$("leave").addEventListener("click", leave);
$("bandwidth").addEventListener("change", () => codec.request("bandwidth", { bandwidth: $("bandwidth").value }).catch(() => {}));
$("mute").addEventListener("click", async () => {
  muted = !muted;
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute").textContent = muted ? "Unmute" : "Mute";
  await codec.request("mute", { muted }).catch(() => {});
});
