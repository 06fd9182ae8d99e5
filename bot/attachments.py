"""Discord attachments that should be audio: recognise them, check them cheaply, download them.

Shared by enrolment (``cogs.enroll``) and voice messages (``bot.voice_messages``). A Discord voice
message is recognised by its message flag; any other attachment by its content type or, without one,
its file extension. The size (and, for voice messages, the declared length) is checked before
downloading; what the bytes really are is ffprobe's job in ``core.intake``.
"""

from __future__ import annotations

import discord

from bot.enrollment import MAX_CONSENT_BYTES, Upload
from bot.replies import size_text
from core.errors import AudioTooLarge, NotAudio
from core.i18n import N_, tr

AUDIO_EXTENSIONS = (
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".wav",
    ".flac",
    ".webm",
    ".mp4",
    ".mkv",
    ".mov",
)
NO_RECORDING = N_(
    "That message has no voice recording. Record a voice message, or upload a file with `/enroll clip:`."
)


def looks_like_audio(att: discord.Attachment) -> bool:
    """Audio or video by content type; by extension when Discord gave no type."""
    kind = (att.content_type or "").split(";")[0].strip().lower()
    if kind.startswith(("audio/", "video/")):
        return True
    return not kind and att.filename.lower().endswith(AUDIO_EXTENSIONS)


def audio_attachment(message: discord.Message) -> discord.Attachment | None:
    """The message's recording: the attachment of a voice message, else the first audio-like file."""
    for att in message.attachments:
        if message.flags.voice or looks_like_audio(att):
            return att
    return None


def voice_attachment(message: discord.Message, *, missing: str = NO_RECORDING) -> discord.Attachment:
    """The audio attachment of a message (a voice message has exactly one); ``NotAudio(missing)`` if none.

    ``missing`` is a marked message (``N_``), translated here.
    """
    att = audio_attachment(message)
    if att is None:
        raise NotAudio(tr(missing))
    return att


async def read_upload(
    att: discord.Attachment, message: discord.Message | None = None, *, max_bytes: int = MAX_CONSENT_BYTES
) -> Upload:
    """Check size and type before downloading; re-fetch the message if the attachment URL expired."""
    if att.size > max_bytes:
        raise AudioTooLarge(
            tr(
                "`{file}` is {size}; recordings up to {limit} are accepted. A minute of speech as a voice "
                "message, ogg, m4a or mp3 is far smaller.",
                file=discord.utils.escape_markdown(att.filename),
                size=size_text(att.size),
                limit=size_text(max_bytes),
            )
        )
    if not looks_like_audio(att):
        raise NotAudio(
            tr(
                "`{file}` doesn't look like audio. Send a voice message or an mp3/ogg/m4a/wav file.",
                file=discord.utils.escape_markdown(att.filename),
            )
        )
    try:
        data = await att.read()
    except discord.NotFound:
        if message is None:
            raise
        # Attachment URLs are signed and expire; the message gives fresh ones.
        fresh = await message.channel.fetch_message(message.id)
        match = next((a for a in fresh.attachments if a.id == att.id), None)
        if match is None:
            raise NotAudio(tr("That recording was deleted from the message. Send it again.")) from None
        data = await match.read()
    return Upload(data=data, filename=att.filename, content_type=att.content_type)
