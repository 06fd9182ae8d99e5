"""``/enroll`` and the message command "Enroll this voice message": thin, the work is in bot.enrollment."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from babel.numbers import format_decimal
from discord import app_commands
from discord.ext import commands

from bot.attachments import read_upload, voice_attachment
from bot.enrollment import (
    MAX_CLIP_BYTES,
    STAGE_TEXT,
    EnrollmentResult,
    Stage,
    Upload,
    consent_statement,
    phrase_language,
)
from bot.errors import NotOwnRecording
from bot.policy import Actor
from bot.replies import guild_member, respond
from core.i18n import N_, current_locale, tr
from worker.types import SpeechRequest

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.enroll")

STAGES: tuple[Stage, ...] = ("checking", "transcribing", "comparing", "cloning")
NO_PREVIEW = N_(
    "I couldn't make a preview of your new voice right now: the speech engine failed or was too slow. "
    "Your voice is stored all the same; `/voice preview` tries again."
)


def _number(value: float, pattern: str) -> str:
    """A measurement in the reader's notation ("1.5" in English, "1,5" in French)."""
    return format_decimal(value, format=pattern, locale=current_locale())


def result_embed(result: EnrollmentResult) -> discord.Embed:
    q = result.quality
    title = tr("Your voice was re-enrolled") if result.replaced else tr("Your voice is enrolled")
    embed = discord.Embed(title=title, colour=discord.Colour.green())
    embed.description = tr(
        "Try it with `/speak` in a voice channel. `/voice status` shows what is stored, "
        "`/voice delete` removes it at any time. A short preview in your new voice follows in a moment."
    )
    embed.add_field(
        name=tr("Speech used"),
        value=tr(
            "{speech} s of {duration} s",
            speech=_number(q.speech_s, "0.0"),
            duration=_number(q.duration_s, "0.0"),
        ),
    )
    embed.add_field(name=tr("Level"), value=tr("{level} dBFS", level=_number(q.level_dbfs, "0")))
    embed.add_field(name=tr("Noise"), value=tr("SNR {snr} dB", snr=_number(q.snr_db, "0")))
    embed.add_field(
        name=tr("Phrase match"),
        value=tr("{percent}% of words", percent=_number((1 - result.phrase.word_error_rate) * 100, "0")),
    )
    if result.speaker is not None:
        embed.add_field(
            name=tr("Reference clip"),
            value=tr("same speaker ({similarity})", similarity=_number(result.speaker.similarity, "0.00")),
        )
    if q.warnings:
        embed.add_field(name=tr("Tips"), value="\n".join(f"• {w}" for w in q.warnings), inline=False)
    if result.spectrogram_png:
        embed.set_image(url="attachment://spectrogram.png")
    return embed


class Enroll(commands.Cog):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Enroll this voice message", callback=self.enroll_message)
        self.menu.guild_only = True
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="enroll")
    @app_commands.guild_only()
    @app_commands.describe(
        clip="Your recording of the phrase (ogg, mp3, m4a, wav...). Leave it out to get a phrase.",
        reference="Optional: a longer clip (30 s to 2 min) of you talking naturally, for a better clone",
    )
    async def enroll(
        self,
        interaction: discord.Interaction,
        clip: discord.Attachment | None = None,
        reference: discord.Attachment | None = None,
    ) -> None:
        """Enroll your voice: get a consent phrase to read, then send your recording of it."""
        guild, member = guild_member(interaction)
        actor = Actor.from_member(member)
        if clip is None:
            language = phrase_language(interaction.locale)  # the member's Discord client language
            challenge = await self.bot.enrollment.begin(guild.id, actor, language)
            rules = await self.bot.repos.settings.get(guild.id)
            text = consent_statement(challenge.phrase, guild.name, rules.retention_days, challenge.expires_at)
            await respond(interaction, text, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        upload = await read_upload(clip)
        ref = await read_upload(reference, max_bytes=MAX_CLIP_BYTES) if reference is not None else None
        await self._run(interaction, actor, upload, ref)

    async def enroll_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Enroll from one of your own voice messages."""
        _, member = guild_member(interaction)
        if message.author.id != member.id:
            raise NotOwnRecording(
                tr("You can only enroll your own voice: use this on a voice message you recorded yourself.")
            )
        att = voice_attachment(message)
        await interaction.response.defer(ephemeral=True, thinking=True)
        upload = await read_upload(att, message)
        await self._run(interaction, Actor.from_member(member), upload, None)

    async def _run(
        self, interaction: discord.Interaction, actor: Actor, upload: Upload, reference: Upload | None
    ) -> None:
        guild, _ = guild_member(interaction)
        done: list[Stage] = []

        async def progress(stage: Stage) -> None:
            if stage == "done":
                return
            done.append(stage)
            lines = [("✅ " if s in done[:-1] else "⏳ ") + tr(STAGE_TEXT[s]) for s in STAGES if s in done]
            try:
                await interaction.edit_original_response(content="\n".join(lines))
            except discord.HTTPException:
                log.debug("progress update skipped")

        result = await self.bot.enrollment.enroll(guild.id, actor, upload, reference, progress)
        files = []
        if result.spectrogram_png:
            files.append(discord.File(io.BytesIO(result.spectrogram_png), filename="spectrogram.png"))
        await respond(interaction, None, embed=result_embed(result), files=files, ephemeral=True)
        # The voice is stored: answer now, and send the preview as a follow-up when it is made.
        self.bot.run_later(self._send_preview(interaction, result.preview_request), name="enrolment-preview")

    async def _send_preview(self, interaction: discord.Interaction, request: SpeechRequest) -> None:
        try:
            wav = await self.bot.enrollment.preview(request)
            if wav is None:
                await respond(interaction, tr(NO_PREVIEW), ephemeral=True)
                return
            file = discord.File(io.BytesIO(wav), filename="preview.wav")
            await respond(
                interaction,
                tr("Your new voice: “{text}”", text=request.text),
                files=[file],
                ephemeral=True,
            )
        except discord.HTTPException as exc:
            log.warning("could not send the enrolment preview: HTTP %s", exc.status)
        except Exception:
            log.exception("enrolment preview failed", extra={"guild_id": interaction.guild_id})


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Enroll(bot))
