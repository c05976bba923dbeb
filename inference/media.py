"""Images and audio at the gateway's edge: fetched, decoded and checked before the worker sees them.

Everything a client sends is checked here, in the web process, so a bad upload is a clear
400 naming the part at fault and the worker only ever gets what it can use:

- images (chat `image_url` parts, Anthropic `image` blocks): data URLs, base64 or http(s)
  URLs fetched with a size cap and a timeout; the format must be one we decode, the
  pixel count bounded (no decompression bombs), and the whole image must decode.
- audio uploads (speech to text): decoded with libsndfile (WAV, FLAC, MP3, OGG), mixed to
  mono, resampled to the worker's rate, bounded in bytes and in duration.
- generated speech: encoded to WAV, FLAC, MP3 or raw PCM for the response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

from inference import protocol as p
from mlxmanager.errors import DomainError

if TYPE_CHECKING:
    import httpx

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImageSource:
    """Where one image comes from: a URL (http(s) or data:) or base64 data, and the request
    parameter it sits at (for the error message)."""

    param: str
    url: str | None = None
    data: str | None = None  # base64
    media_type: str | None = None


# ---- images -------------------------------------------------------------------------


def _bad(message: str, param: str) -> DomainError:
    return DomainError(message, param=param, code="invalid_image")


def _b64(text: str, param: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("the image data is not valid base64", param) from exc


def check_image(raw: bytes, param: str) -> bytes:
    """`raw` if it is a whole image in a format we serve, within the pixel limit; else a 400."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise _bad("the image is empty", param)
    if len(raw) > settings.MLXM_IMAGE_MAX_BYTES:
        raise _bad(
            f"the image is {len(raw) >> 20} MB, more than the {settings.MLXM_IMAGE_MAX_BYTES >> 20} MB allowed",
            param,
        )
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt = img.format or "?"
            if fmt not in IMAGE_FORMATS:
                raise _bad(f"unsupported image format {fmt}: send PNG, JPEG, GIF or WEBP", param)
            width, height = img.size
            if width * height > settings.MLXM_IMAGE_MAX_PIXELS:
                raise _bad(
                    f"the image is {width}x{height} pixels, more than the "
                    f"{settings.MLXM_IMAGE_MAX_PIXELS:,} allowed",
                    param,
                )
            img.load()  # decode it all: a truncated or corrupt file fails here, not in the worker
    except DomainError:
        raise
    except UnidentifiedImageError as exc:
        raise _bad("the image could not be read: send PNG, JPEG, GIF or WEBP", param) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _bad(f"the image could not be decoded: {exc}", param) from exc
    return raw


def _data_url(url: str, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise _bad("a data URL image must look like data:image/png;base64,<data>", param)
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise _bad(f"a data URL of type {mime} is not an image", param)
    return _b64(url[match.end() :], param)


# IPv6 ranges that carry an IPv4 address in their last 32 bits: IPv4-compatible (::a.b.c.d,
# deprecated) and NAT64's well-known prefix (RFC 6052). NAT64's local-use prefix (RFC 8215)
# is refused outright: where it routes is up to the local network.
_IPV4_IN_LOW_BITS = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a mapping, translator or tunnel:
    IPv4-mapped, IPv4-compatible, NAT64, 6to4 (2002::/16) and Teredo (server and client)."""
    out = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo is not None:
        out.extend(addr.teredo)
    if any(addr in net for net in _IPV4_IN_LOW_BITS):
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def internal_address(addr: Address) -> bool:
    """Whether `addr` is (or leads to) a loopback, private, link-local, reserved or multicast
    address; an IPv6 address is judged by every IPv4 address it embeds too (Python 3.11 calls
    ::7f00:1, 64:ff9b::a9fe:a9fe and 2002:7f00:1:: global)."""
    if not addr.is_global or addr.is_multicast:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64_LOCAL:
            return True
        return any(not v4.is_global or v4.is_multicast for v4 in _embedded_ipv4(addr))
    return False


def _resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, each one checked (unless MLXM_IMAGE_FETCH_PRIVATE): the fetch
    connects to one of these, never resolving the name again (no DNS rebinding between the
    check and the connection)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    addresses: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]  # no IPv6 zone: link-local is refused anyway
        if ip not in addresses:
            addresses.append(ip)
    if not settings.MLXM_IMAGE_FETCH_PRIVATE and any(
        internal_address(ipaddress.ip_address(ip)) for ip in addresses
    ):
        raise PermissionError(host)
    return addresses


def pinned_request(client: httpx.AsyncClient, url: httpx.URL, ip: str) -> httpx.Request:
    """A GET of `url` sent to `ip`: the Host header and the TLS server name (SNI, and the name
    the certificate is checked against) stay the URL's host."""
    return client.build_request(
        "GET",
        url.copy_with(host=ip),
        headers={"accept": "image/*", "host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.raw_host.decode("ascii")},
    )


async def _fetch(url: str, param: str) -> bytes:
    import httpx

    limit = settings.MLXM_IMAGE_MAX_BYTES
    timeout = settings.MLXM_IMAGE_FETCH_TIMEOUT
    try:
        # trust_env=False: a proxy from the environment would resolve the name again itself.
        async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                target = httpx.URL(url)
                if target.scheme not in ("http", "https") or not target.host:
                    raise _bad("an image URL must be http(s) or a data URL", param)
                host = target.raw_host.decode("ascii")  # IDNA-encoded, IPv6 without brackets
                port = target.port or (443 if target.scheme == "https" else 80)
                try:
                    addresses = await asyncio.to_thread(_resolve, host, port)
                except PermissionError:
                    raise _bad(
                        f"the image URL points at an internal address ({target.host}); "
                        "send the image as base64 instead",
                        param,
                    ) from None
                except OSError as exc:
                    raise _bad(f"the image URL could not be fetched: {exc}", param) from exc
                response = await _connect(client, target, addresses)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = str(target.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise _bad(f"fetching the image URL gave HTTP {response.status_code}", param)
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise _bad(f"the image at the URL is larger than {limit >> 20} MB", param)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise _bad(f"the image at the URL is larger than {limit >> 20} MB", param)
                    return bytes(body)
                finally:
                    await response.aclose()
            raise _bad("the image URL redirects too many times", param)
    except TimeoutError as exc:
        raise _bad(f"fetching the image URL took longer than {timeout:g} s", param) from exc
    except httpx.HTTPError as exc:
        raise _bad(f"the image URL could not be fetched: {exc}", param) from exc


async def _connect(client: httpx.AsyncClient, url: httpx.URL, addresses: list[str]) -> httpx.Response:
    """The streamed response of `url` from the first of `addresses` that accepts a connection."""
    import httpx

    for ip in addresses[:-1]:
        try:
            return await client.send(pinned_request(client, url, ip), stream=True)
        except httpx.ConnectError:
            continue  # e.g. an IPv6 address where this host has no IPv6 route: the next one
    return await client.send(pinned_request(client, url, addresses[-1]), stream=True)


async def load_image(source: ImageSource) -> bytes:
    if source.data is not None:
        if source.media_type and source.media_type not in IMAGE_FORMATS.values():
            raise _bad(
                f"unsupported media_type {source.media_type}: use image/png, image/jpeg, image/gif "
                "or image/webp",
                source.param,
            )
        raw = _b64(source.data, source.param)
    else:
        url = (source.url or "").strip()
        if url.startswith("data:"):
            raw = _data_url(url, source.param)
        else:
            raw = await _fetch(url, source.param)
    return await asyncio.to_thread(check_image, raw, source.param)


async def load_images(sources: list[ImageSource], *, model: str, vision: bool) -> list[bytes]:
    """The images of one request, checked, in order; a 400 if the model takes none."""
    if not sources:
        return []
    if not vision:
        raise DomainError(
            f"'{model}' does not accept images: send them to a vision profile",
            param=sources[0].param,
            code="images_not_supported",
        )
    if len(sources) > settings.MLXM_MAX_IMAGES:
        raise DomainError(
            f"at most {settings.MLXM_MAX_IMAGES} images per request (got {len(sources)})",
            param=sources[settings.MLXM_MAX_IMAGES].param,
            code="too_many_images",
        )
    return list(await asyncio.gather(*(load_image(s) for s in sources)))


# ---- audio in -------------------------------------------------------------------------


def _bad_audio(message: str, param: str = "file") -> DomainError:
    return DomainError(message, param=param, code="invalid_audio")


def decode_audio(raw: bytes, *, rate: int = p.AUDIO_SAMPLE_RATE) -> tuple[bytes, float]:
    """An upload as mono 16-bit PCM at `rate` and its duration in seconds; a 400 if it isn't audio
    we can read or is too long."""
    import soundfile as sf

    if not raw:
        raise _bad_audio("the audio file is empty")
    if len(raw) > settings.MLXM_AUDIO_MAX_BYTES:
        raise _bad_audio(
            f"the audio file is {len(raw) >> 20} MB, more than the {settings.MLXM_AUDIO_MAX_BYTES >> 20} MB allowed"
        )
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            if seconds > settings.MLXM_AUDIO_MAX_SECONDS:
                raise _bad_audio(
                    f"the audio is {seconds:.0f} s long, more than the {settings.MLXM_AUDIO_MAX_SECONDS:g} s allowed"
                )
            data = f.read(dtype="float32", always_2d=True)
            source_rate = f.samplerate
    except DomainError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise _bad_audio("the audio could not be decoded: send WAV, FLAC, MP3 or OGG (Vorbis/Opus)") from exc
    if data.size == 0:
        raise _bad_audio("the audio file holds no samples")
    mono = data.mean(axis=1)
    if source_rate != rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(source_rate, rate)
        mono = resample_poly(mono, rate // g, source_rate // g).astype(np.float32)
    pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")
    return pcm.tobytes(), len(mono) / rate


# ---- audio out ------------------------------------------------------------------------

SPEECH_FORMATS = ("wav", "mp3", "flac", "pcm")
SPEECH_MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "pcm": "audio/pcm"}
PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz, 16-bit signed little-endian, mono


def _resample(samples: np.ndarray, source: int, rate: int) -> np.ndarray:
    if source == rate or samples.size == 0:
        return samples
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(source, rate)
    return resample_poly(samples, rate // g, source // g).astype(np.float32)


def _int16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono WAV header; `data_bytes=None` (a stream of unknown length) writes the
    maximum sizes, which players read as "until the end"."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", size)
    )  # fmt: skip


class SpeechEncoder:
    """Turns float32 sample chunks into the bytes of one response format.

    `pcm` and `wav` are written as the chunks come (a streamed WAV declares an open length);
    FLAC and MP3 are encoded once the audio is complete.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.rate = 0
        self._held: list[np.ndarray] = []
        self._started = False

    @property
    def streams(self) -> bool:
        return self.fmt in ("pcm", "wav")

    def add(self, samples: np.ndarray, rate: int) -> bytes:
        self.rate = self.rate or rate
        if self.fmt == "pcm":
            return _int16(_resample(samples, rate, PCM_RATE))
        if self.fmt == "wav":
            head = b"" if self._started else wav_header(rate)
            self._started = True
            return head + _int16(samples)
        self._held.append(samples)
        return b""

    def finish(self) -> bytes:
        if self.streams:
            if self.fmt == "wav" and not self._started:
                self._started = True
                return wav_header(self.rate or PCM_RATE, 0)
            return b""
        import soundfile as sf

        audio = np.concatenate(self._held) if self._held else np.zeros(0, dtype=np.float32)
        out = io.BytesIO()
        fmt = {"flac": "FLAC", "mp3": "MP3"}[self.fmt]
        subtype = {"flac": "PCM_16", "mp3": "MPEG_LAYER_III"}[self.fmt]
        rate = self.rate or PCM_RATE
        if self.fmt == "mp3" and rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
            audio, rate = _resample(audio, rate, 24000), 24000
        sf.write(out, audio, rate, format=fmt, subtype=subtype)
        return out.getvalue()


def encode_speech(chunks: Iterable[tuple[np.ndarray, int]], fmt: str) -> bytes:
    """All of `chunks` in one response body of format `fmt`."""
    enc = SpeechEncoder(fmt)
    parts = [enc.add(samples, rate) for samples, rate in chunks]
    if fmt == "wav":  # a whole file: its real length in the header
        body = b"".join(parts)[44:]
        return wav_header(enc.rate or PCM_RATE, len(body)) + body
    return b"".join(parts) + enc.finish()
