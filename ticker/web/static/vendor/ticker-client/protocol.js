/** The server's messages other than ticks, and its error codes (docs/API.md). */
/** Codes a client made no mistake to get: retrying later (with backoff) can succeed. */
export const RETRYABLE_CODES = new Set([
    "auth_unavailable", "rate_limited", "too_many_connections", "server_busy", "bus_unavailable",
    "database_unavailable", "internal_error", "token_expired", "token_not_yet_valid",
    "slow_consumer", "connection_max_age",
]);
