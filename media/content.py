"""Turning an inbound SMS/MMS (or WhatsApp message) into an LLM user message.

* text: quoted and attributed ("The caller sent a text message during the call: ...");
* images: decoded with Pillow (at most ``MAX_IMAGE_PIXELS``, checked from the header), scaled to at
  most 1024 px, re-encoded as JPEG, attached as ``image_url`` data-URL parts;
* audio (amr/ogg/mp3/...): converted to 16 kHz mono WAV with ffmpeg (the one ``imageio-ffmpeg``
  ships with the ``[media]`` extra, or ffmpeg on PATH), at most ``MAX_VOICE_SECONDS`` of it (ffmpeg's
  output is capped as it is read), transcribed by the configured
  :class:`Transcriber`; without ffmpeg the attachment becomes a note saying so;
* video: the audio track transcribed, two key frames attached as images;
* text/vCard/calendar: decoded text (capped); PDF and others: a clear "unsupported attachment" note.

Heavy work (decoding, ffmpeg, transcription) runs off the event loop or as subprocesses, at most
``MAX_CONVERSIONS`` attachments at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

try:
    import resource
except ImportError:  # Windows: ffmpeg's memory is not capped there
    resource = None  # type: ignore[assignment]

from incall_sms.inbound import InboundMessage
from incall_sms.media.fetch import FetchedMedia, MediaError, MediaFetcher

__all__ = ["Transcriber", "build_user_message", "ffmpeg_exe"]

_log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 1024
MAX_TEXT_ATTACHMENT = 2000
#: Largest image decoded, in pixels (a few KB of PNG can declare a huge canvas: refused from its header).
MAX_IMAGE_PIXELS = 40_000_000
#: Seconds of a voice note (or a video's sound track) transcribed: the rest is cut (a few KB of compressed
#: silence can decode to hours of audio).
MAX_VOICE_SECONDS = 600
_FFMPEG_TIMEOUT = 30.0
#: Bytes ffmpeg may write: 16 kHz mono 16-bit WAV for MAX_VOICE_SECONDS, with room for the header.
_WAV_MAX_BYTES = 32_000 * MAX_VOICE_SECONDS + 4096
_FRAMES_MAX_BYTES = 8 << 20
#: Resident memory an ffmpeg conversion may use (bytes); a voice note or a video's key frames need far less.
FFMPEG_MAX_MEMORY = 768 << 20
#: Address space it may reserve: a backstop against one sudden huge allocation the memory watch would miss.
FFMPEG_MAX_ADDRESS_SPACE = 3 << 30
_MEMORY_POLL_S = 0.05
#: Attachments converted at once per event loop (each can take ~0.3 GB and a core): more wait their turn.
MAX_CONVERSIONS = 2
_CONVERSION_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _conversion_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slot = _CONVERSION_SLOTS.get(loop)
    if slot is None:
        slot = _CONVERSION_SLOTS[loop] = asyncio.Semaphore(MAX_CONVERSIONS)
    return slot


#: Characters that break a line without being control characters (JSON leaves them as they are).
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def quoted(text: str) -> str:
    """``text`` as one JSON string on one line: caller text cannot close the quote or start a line of its own."""
    return json.dumps(text, ensure_ascii=False).translate(_LINE_BREAKS)


class Transcriber(Protocol):
    """Speech-to-text for recorded audio (Deepgram prerecorded in production, offline in simulation)."""

    async def transcribe(self, wav_16k_mono: bytes) -> str:
        """Return the transcript of a 16 kHz mono WAV."""
        ...


def ffmpeg_exe() -> str:
    """Path of an ffmpeg binary: ``$FFMPEG``, the one ``imageio-ffmpeg`` ships (the ``[media]`` extra), or PATH.

    Raises:
        MediaError: ``no_ffmpeg``: none of them (voice notes and videos become a note saying so).
    """
    if os.environ.get("FFMPEG"):
        return os.environ["FFMPEG"]
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise MediaError("no_ffmpeg")


async def _ffmpeg(args: Sequence[str], data: bytes, *, max_output: int) -> bytes:
    """Run ffmpeg on ``data`` (written to a temp file) and return what it writes to stdout.

    ffmpeg's memory is capped: a few KB of media can declare frames that decode to gigabytes. Its
    resident memory is watched (:data:`FFMPEG_MAX_MEMORY`, Linux ``/proc``) and it is stopped past it; its
    threads are bounded (one per stage, not one per core) and its address space is capped well above what
    that needs (:data:`FFMPEG_MAX_ADDRESS_SPACE`), a backstop against a sudden allocation.

    Raises:
        MediaError: ``too_large`` (more than ``max_output`` bytes, or more memory than the cap: ffmpeg is
            stopped, nothing is kept), ``timeout``, ``undecodable``.
    """
    async with _conversion_slot():  # the slot covers decoding only, not transcription
        return await _run_ffmpeg(args, data, max_output=max_output)


def _cap_address_space(pid: int) -> None:
    """Limit process ``pid``'s address space to :data:`FFMPEG_MAX_ADDRESS_SPACE` (where the OS lets us)."""
    prlimit = getattr(resource, "prlimit", None) if resource is not None else None
    if prlimit is None:
        return
    with contextlib.suppress(OSError, ValueError):  # it exited already, or the limit is not allowed here
        prlimit(pid, resource.RLIMIT_AS, (FFMPEG_MAX_ADDRESS_SPACE, FFMPEG_MAX_ADDRESS_SPACE))


def _resident_bytes(pid: int) -> int | None:
    """Process ``pid``'s resident memory (Linux ``/proc``), or ``None`` (gone, or no ``/proc`` here)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: One thread per stage whatever the host's cores (threads each reserve a stack and a malloc arena), and few arenas.
_BOUNDED_THREADS = ("-threads", "1", "-filter_threads", "1", "-filter_complex_threads", "1")
_FFMPEG_ENV = {"MALLOC_ARENA_MAX": "2"}


async def _run_ffmpeg(args: Sequence[str], data: bytes, *, max_output: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in")
        with open(src, "wb") as handle:  # noqa: ASYNC230 - small local temp file
            handle.write(data)
        proc = await asyncio.create_subprocess_exec(
            ffmpeg_exe(), "-nostdin", "-loglevel", "error", *_BOUNDED_THREADS, "-i", src, "-threads", "1", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ, **_FFMPEG_ENV},
        )
        _cap_address_space(proc.pid)  # before it has read its input: it is still starting up
        assert proc.stdout is not None
        over = False

        async def watch() -> None:
            nonlocal over
            while proc.returncode is None:
                await asyncio.sleep(_MEMORY_POLL_S)
                resident = _resident_bytes(proc.pid)
                if resident is None:
                    return  # gone, or nothing to read here
                if resident > FFMPEG_MAX_MEMORY:
                    over = True
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    return

        async def collect() -> bytes:
            chunks: list[bytes] = []
            size = 0
            while chunk := await proc.stdout.read(1 << 16):
                size += len(chunk)
                if size > max_output:
                    raise MediaError("too_large")
                chunks.append(chunk)
            await proc.wait()
            return b"".join(chunks)

        watcher = asyncio.get_running_loop().create_task(watch(), name="ffmpeg-memory")
        try:
            out = await asyncio.wait_for(collect(), _FFMPEG_TIMEOUT)
        except (TimeoutError, MediaError, asyncio.CancelledError) as exc:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise MediaError("timeout") from None
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if over:
            raise MediaError("too_large")
        if proc.returncode != 0:
            raise MediaError("undecodable")
        return out


async def _image_content(data: bytes) -> dict[str, Any]:
    async with _conversion_slot():
        return await asyncio.to_thread(_image_part, data)


def _image_part(data: bytes) -> dict[str, Any]:
    from PIL import Image

    try:  # (Pillow's own MAX_IMAGE_PIXELS, process-wide, is left alone: it only warns below twice its value)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header, before anything is decoded
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaError("too_large")
            image.draft("RGB", (2 * MAX_IMAGE_SIDE, 2 * MAX_IMAGE_SIDE))  # a JPEG decodes at 1/2-1/8 scale
            image.load()
            frame = image.convert("RGB")
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        raise MediaError("undecodable") from None
    frame.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=85)
    encoded = base64.b64encode(out.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}}


async def _audio_text(data: bytes, transcriber: Transcriber | None) -> str:
    if transcriber is None:
        return "[a voice note was attached, but no speech-to-text is configured]"
    wav = await _ffmpeg(["-vn", "-t", str(MAX_VOICE_SECONDS), "-ac", "1", "-ar", "16000", "-f", "wav", "pipe:1"],
                        data, max_output=_WAV_MAX_BYTES)
    transcript = (await transcriber.transcribe(wav)).strip()
    return (f"[voice note] {quoted(transcript)}" if transcript
            else "[a voice note with no recognisable speech]")


async def _video_parts(data: bytes, transcriber: Transcriber | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    try:
        speech = await _audio_text(data, transcriber)
        parts.append({"type": "text", "text": f"[video] sound track: {speech}"})
    except MediaError:
        parts.append({"type": "text", "text": "[video] (no sound track)"})
    # scaled before the thumbnail filter, which holds a batch of 100 frames: at a small video's 8K size that
    # batch alone took 5 GB (and one decoding thread: frame threads each keep their own full-size frames)
    try:
        frames = await _ffmpeg(["-vf", "scale='min(640,iw)':-2,thumbnail", "-frames:v", "2", "-f", "image2pipe",
                                "-vcodec", "mjpeg", "pipe:1"], data, max_output=_FRAMES_MAX_BYTES)
    except MediaError as exc:  # the sound track already read stays
        if not any(p["type"] == "text" and "sound track:" in p["text"] for p in parts):
            raise
        parts.append({"type": "text", "text": f"[video] (no pictures: {exc.reason})"})
        return parts
    for chunk in frames.split(b"\xff\xd9")[:2]:
        if chunk.strip():
            parts.append(await _image_content(chunk + b"\xff\xd9"))
    return parts


async def _parts_for(item: FetchedMedia, transcriber: Transcriber | None) -> list[dict[str, Any]]:
    kind = item.content_type.split("/")[0]
    if kind == "image":
        return [await _image_content(item.data)]
    if kind == "audio":
        return [{"type": "text", "text": await _audio_text(item.data, transcriber)}]
    if kind == "video":
        return await _video_parts(item.data, transcriber)
    if item.content_type in ("text/plain", "text/vcard", "text/x-vcard", "text/calendar"):
        text = item.data.decode("utf-8", errors="replace")[:MAX_TEXT_ATTACHMENT]
        return [{"type": "text", "text": f"[attached {item.content_type}] {quoted(text)}"}]
    return [{"type": "text", "text": f"[unsupported attachment: {item.content_type}; its content is not available]"}]


async def build_user_message(
    message: InboundMessage,
    *,
    fetcher: MediaFetcher | None,
    transcriber: Transcriber | None = None,
) -> dict[str, Any]:
    """Build the LLM user message for an inbound SMS/MMS (fetching and converting media).

    Never raises for bad media: each failed attachment becomes a clear note.
    """
    parts: list[dict[str, Any]] = []
    kind = "a WhatsApp message" if message.channel == "whatsapp" else "a text message"
    intro = f"The caller sent {kind} to this number during the call"
    body = message.body.strip()
    # quoted as JSON: a body cannot close the quote and add lines that look like the system's own notes
    parts.append({"type": "text", "text": f"{intro}: {quoted(body)}" if body
                  else f"{intro} (no text)."})
    budget = fetcher.policy.max_total_bytes if fetcher else 0
    for index, media in enumerate(message.media):
        if fetcher is None:
            parts.append({"type": "text", "text": f"[attachment {index + 1} ({media.content_type}) not fetched]"})
            continue
        try:
            item = await fetcher.fetch(media, budget=budget)
            budget -= len(item.data)
            parts.extend(await _parts_for(item, transcriber))
        except MediaError as exc:
            _log.warning("inbound %s attachment %d: %s", message.sid, index, exc.reason)
            parts.append({"type": "text", "text": f"[attachment {index + 1} ({media.content_type}) could not be "
                                                  f"opened: {exc.reason.replace('_', ' ')}]"})
    if len(parts) == 1:
        return {"role": "user", "content": parts[0]["text"]}
    return {"role": "user", "content": parts}
