"""The bundled Kite simulator: Kite's ticker WebSocket and REST API on one local port.

`python -m ticker.sim --port 8765` (or `ticker.sim.server.run`). Modules: `universe`
(instruments), `market` (prices), `accounts` (login and tokens), `stream` (ticker WebSocket),
`rest` (Kite REST API), `control` (`/_sim/` operator endpoints), `errors` (Kite's JSON
envelope), `state` (configuration and shared state), `server` (the app and `run`).
"""
