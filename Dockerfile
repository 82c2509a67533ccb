FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --create-home ticker && mkdir -p instance upstream && chown ticker instance upstream
USER ticker
EXPOSE 5000
# Liveness of the default command (the web replica); docker-compose.yml sets one per service.
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health/live', timeout=3)"
CMD ["python", "wsgi.py"]
