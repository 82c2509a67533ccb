"""The web replica: JWT-authenticated Socket.IO rooms per instrument, and the HTTP routes."""
