// How long a page whose connection to the relay was lost waits before each new try, as client.py does
// (call/connection.backoff): every 100 ms for the first second, since a link that drops for a moment (a
// Wi-Fi handover, a proxy cutting connections) is back within a fraction of one and every moment waited is
// silence in the call; then 0.2, 0.4, … up to 5 s for a relay that stays away. Jittered by ±20 %, so that
// a room does not reconnect in lockstep.

export const QUICK_RETRIES = 10;

/** Seconds to wait before retry number `retry` (0 for the first after the loss). */
export function reconnectDelay(retry, random = Math.random) {
  const base = retry < QUICK_RETRIES ? 0.1 : Math.min(5, 0.2 * 2 ** (retry - QUICK_RETRIES));
  return base * (0.8 + 0.4 * random());
}
