/** Reading a JWT's `exp` without verifying it (the server verifies; the client only schedules). */
/** The token's `exp` in epoch seconds, or null when it has none or cannot be read. */
export function expiryOf(jwt) {
    const payload = jwt.split(".")[1];
    if (payload === undefined)
        return null;
    try {
        const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
        const claims = JSON.parse(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)));
        return typeof claims.exp === "number" ? claims.exp : null;
    }
    catch {
        return null;
    }
}
/**
 * Milliseconds from `nowMs` until a token expiring at `exp` (epoch seconds) should be renewed:
 * `beforeSecs` ahead of `exp`; a token with less than three times that left is renewed once two
 * thirds of its remaining life have passed instead (so a short-lived token is not renewed in a
 * loop); never less than zero.
 */
export function renewalDelayMs(exp, nowMs, beforeSecs) {
    const left = exp * 1000 - nowMs;
    return Math.max(0, left - beforeSecs * 1000, (left * 2) / 3);
}
