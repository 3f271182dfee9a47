# The live phone agent: `incall-sms serve` (settings from the environment, see the README's table).
#   docker build -t incall-sms .
#   docker run --rm -p 8765:8765 -e TWILIO_ACCOUNT_SID=... -e TWILIO_AUTH_TOKEN=... -e DEEPGRAM_API_KEY=... \
#              -e OPENAI_API_KEY=... -e PUBLIC_URL=https://agent.example.com -v incall-sms-state:/var/lib/incall-sms \
#              incall-sms
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SMS_STATE_DIR=/var/lib/incall-sms

WORKDIR /app
COPY pyproject.toml setup.py README.md LICENSE NOTICE ./
COPY incall_sms ./incall_sms
COPY pipeline ./pipeline
COPY processors ./processors
COPY media ./media
# [media]: ffmpeg for the voice notes and videos callers text during a call; [postgres]: asyncpg, for a fleet's
# shared outbox (-e DATABASE_URL=postgresql://... -e REDIS_URL=redis://...)
RUN pip install ".[media,postgres]" && useradd --system --home-dir /var/lib/incall-sms --create-home incall-sms

USER incall-sms
VOLUME ["/var/lib/incall-sms"]
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/ready', timeout=2)"
CMD ["incall-sms", "serve", "--host", "0.0.0.0", "--port", "8765"]
