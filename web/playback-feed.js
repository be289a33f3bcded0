// The codec worker's side of the playback worklet's port. The worklet asks for a frame when its queue
// runs low and asks again only once answered, so every request gets a frame: silence while there is no
// call yet (the worklet starts before the call is joined) or where playout failed. A request left
// unanswered would keep the page's speaker silent for the rest of the call.

/** Serves `port`'s requests `{queued}` in order with `await playout(queued)` (samples queued at the codec's
 * rate), or `samplesPerFrame` zeros where that gives null or throws (the error goes to the console). */
export function feedPlayback(port, playout, samplesPerFrame) {
  let ticking = Promise.resolve();
  port.onmessage = ({ data }) => {
    ticking = ticking.then(async () => {
      let mix = null;
      try {
        mix = await playout(data.queued);
      } catch (error) {
        console.error(`playout failed: ${error?.message ?? error}`);
      }
      mix ??= new Float32Array(samplesPerFrame);
      port.postMessage(mix, [mix.buffer]);
    });
  };
}
