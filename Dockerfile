FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --create-home ticker && mkdir -p instance && chown ticker instance
USER ticker
EXPOSE 5000
CMD ["python", "wsgi.py"]
