"""``/voice``: a member's rights over their own voice data in a server: see, hear, export, share, delete."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import discord
from babel.numbers import format_decimal
from discord import app_commands
from discord.ext import commands
from discord.utils import format_dt

from bot.enrollment import preview_text
from bot.errors import NOT_ENROLLED, NoVoiceProfile
from bot.policy import Actor
from bot.replies import guild_member, respond, size_text, use_interaction_locale, user_message
from core.errors import VoxcloneError
from core.i18n import N_, current_locale, ngettext, tr
from storage import (
    Challenge,
    DeletionReport,
    GuildSettings,
    MemberExport,
    StoredSize,
    StoredVoice,
    VoiceProfile,
)
from worker.types import SpeechRequest

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.voice")

CONFIRM_TIMEOUT_S: Final = 60.0  # s: how long the Delete / Cancel buttons wait for an answer
CONFIRM_ID: Final = "voxclone:voice-delete:confirm"
CANCEL_ID: Final = "voxclone:voice-delete:cancel"
EXPORT_FILENAME: Final = "voxclone-voice-data.json"
DELETE_LABEL: Final = N_("Delete everything")
CANCEL_LABEL: Final = N_("Cancel")
RECORDING_EXTENSIONS: Final = {
    "audio/ogg": "ogg", "audio/opus": "opus", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/x-m4a": "m4a",
    "audio/aac": "aac", "audio/wav": "wav", "audio/x-wav": "wav", "audio/flac": "flac", "audio/webm": "webm",
    "video/webm": "webm", "video/mp4": "mp4",
}  # fmt: skip


def _number(value: float, pattern: str) -> str:
    """A measurement in the reader's notation ("1.5" in English, "1,5" in French)."""
    return format_decimal(value, format=pattern, locale=current_locale())


def _mentions(user_ids: list[int]) -> str:
    return ", ".join(f"<@{uid}>" for uid in user_ids) or tr("nobody")


@dataclass(frozen=True)
class Holdings:
    """What is stored about one member in one server (counts and ids; no arrays, no recordings)."""

    profile: VoiceProfile | None
    consent_records: int
    stored: StoredSize  # the bytes behind the voice and its consent recording
    shared_with: list[int]  # members who may use this member's voice
    shared_by: list[int]  # members whose voices this member may use
    assistant_opt_in: bool
    open_phrase: Challenge | None

    @property
    def anything(self) -> bool:
        return bool(
            self.profile or self.shared_with or self.shared_by or self.assistant_opt_in or self.open_phrase
        )


def status_embed(
    guild: discord.Guild, held: Holdings, voice: StoredVoice | None, rules: GuildSettings
) -> discord.Embed:
    """``/voice status``: everything stored, in figures a member can read."""
    embed = discord.Embed(
        title=tr("Your voice data in {server}", server=guild.name), colour=discord.Colour.blurple()
    )
    profile = held.profile
    if profile is None:
        embed.description = tr("You have no cloned voice in this server. `/enroll` creates one.")
    else:
        used = profile.last_used_at
        embed.add_field(name=tr("Enrolled"), value=format_dt(profile.enrolled_at, "f"))
        embed.add_field(name=tr("Last used"), value=format_dt(used, "R") if used else tr("never"))
        keep = tr("until you delete it")
        if rules.retention_days:
            due = (used or profile.enrolled_at) + timedelta(days=rules.retention_days)
            keep = ngettext(
                "until {date} unless used ({n} day unused)",
                "until {date} unless used ({n} days unused)",
                rules.retention_days,
                date=format_dt(due, "D"),
            )
        embed.add_field(name=tr("Kept"), value=keep)
        embed.add_field(name=tr("Consent records"), value=str(held.consent_records))
        stored = held.stored
        embed.add_field(
            name=tr("Stored"),
            value=tr(
                "{total}: consent recording {recording}, voice {voice}",
                total=size_text(stored.total_bytes),
                recording=size_text(stored.recording_bytes),
                voice=size_text(stored.voice_bytes),
            ),
        )
    if voice is not None:
        embed.add_field(name=tr("Model"), value=f"`{voice.embedding.model_id}`")
        embed.add_field(
            name=tr("Speech used"), value=tr("{seconds} s", seconds=_number(voice.clip.speech_seconds, "0.0"))
        )
        q = voice.clip.quality
        if q is not None:
            embed.add_field(
                name=tr("Quality"),
                value=tr(
                    "level {level} dBFS, noise {noise} dBFS, SNR {snr} dB",
                    level=_number(q.level_dbfs, "0"),
                    noise=_number(q.noise_dbfs, "0"),
                    snr=_number(q.snr_db, "0"),
                ),
            )
    embed.add_field(name=tr("You share your voice with"), value=_mentions(held.shared_with), inline=False)
    embed.add_field(name=tr("Voices shared with you by"), value=_mentions(held.shared_by), inline=False)
    embed.add_field(
        name=tr("The assistant may use your voice"), value=tr("yes") if held.assistant_opt_in else tr("no")
    )
    if held.open_phrase is not None:
        expires = format_dt(held.open_phrase.expires_at, "R")
        embed.add_field(name=tr("Open consent phrase"), value=tr("expires {when}", when=expires))
    embed.set_footer(text=tr("/voice export downloads all of it; /voice delete removes it now."))
    return embed


def confirmation_text(guild: discord.Guild, held: Holdings, timeout_s: float) -> str:
    items = []
    if held.profile is not None:
        items.append(tr("your cloned voice"))
        items.append(
            ngettext(
                "{n} consent record with the recording",
                "{n} consent records with the recording",
                held.consent_records,
            )
        )
    if held.shared_with:
        items.append(
            ngettext(
                "your voice shares with {n} member",
                "your voice shares with {n} members",
                len(held.shared_with),
            )
        )
    if held.shared_by:
        items.append(
            ngettext(
                "access to {n} voice shared with you",
                "access to {n} voices shared with you",
                len(held.shared_by),
            )
        )
    if held.assistant_opt_in:
        items.append(tr("your assistant opt-in"))
    if held.open_phrase is not None:
        items.append(tr("your open consent phrase"))
    return tr(
        "**Delete your voice data in {server}?**\n"
        "This removes, immediately and for good: {items}. "
        "Anything queued in your voice stops. You can enroll again later with `/enroll`.\n"
        "These buttons stay active for {seconds} s.",
        server=guild.name,
        items=", ".join(items),
        seconds=_number(timeout_s, "0"),
    )


def deletion_text(report: DeletionReport, stopped: int) -> str:
    if not report.anything:
        return tr("There was nothing left to delete: your voice data here was already gone.")
    items = []
    if report.profile_deleted:
        items.append(
            ngettext(
                "your cloned voice ({n} stored array)",
                "your cloned voice ({n} stored arrays)",
                report.embeddings,
            )
        )
    if report.consent_records:
        items.append(
            ngettext(
                "{n} consent record with the recording",
                "{n} consent records with the recording",
                report.consent_records,
            )
        )
    shares = report.shares_granted + report.shares_received
    if shares:
        items.append(ngettext("{n} voice share", "{n} voice shares", shares))
    if report.assistant_opt_in:
        items.append(tr("your assistant opt-in"))
    if report.challenges:
        items.append(ngettext("{n} consent phrase", "{n} consent phrases", report.challenges))
    text = tr(
        "Deleted {items}. Nothing else about your voice is kept in this server; "
        "the audit log only notes that a deletion happened.",
        items=", ".join(items),
    )
    if report.was_assistant_voice:
        text += " " + tr(
            "Your voice was this server's assistant voice: the admins will need to choose another."
        )
    if stopped:
        text += " " + ngettext(
            "I also stopped {n} message queued in your voice.",
            "I also stopped {n} messages queued in your voice.",
            stopped,
        )
    return text


def export_files(export: MemberExport, limit_bytes: int) -> tuple[list[discord.File], str]:
    """The JSON file, plus the current consent recording as its own file when it fits the upload limit."""
    data = json.dumps(export.to_dict(), indent=2, ensure_ascii=False).encode("utf-8")
    files = [discord.File(io.BytesIO(data), filename=EXPORT_FILENAME)]
    note = tr("Everything stored about you in this server.")
    newest = export.consent_records[-1] if export.consent_records else None
    if newest is not None and newest.recording is not None:
        mime = (newest.recording_mime or "").split(";")[0].strip().lower()
        name = f"consent-recording.{RECORDING_EXTENSIONS.get(mime, 'bin')}"
        if len(data) + len(newest.recording) <= limit_bytes:
            files.append(discord.File(io.BytesIO(newest.recording), filename=name))
            note += " " + tr("Your consent recording is attached as you sent it.")
        else:
            note += " " + tr(
                "Your consent recording is inside the JSON file (base64): too large to attach twice."
            )
    return files, note


class ConfirmDelete(discord.ui.View):
    """Delete / Cancel under a ``/voice delete`` prompt; only the member who asked can press them."""

    def __init__(self, cog: Voice, origin: discord.Interaction, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.cog = cog
        self.origin = origin
        self.owner_id = origin.user.id
        self.confirm.label = tr(DELETE_LABEL)  # the decorators' labels are English: the member's language
        self.cancel.label = tr(CANCEL_LABEL)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        use_interaction_locale(interaction)  # buttons run outside the command tree's check
        if interaction.user.id == self.owner_id:
            return True
        await respond(
            interaction,
            tr(
                "These buttons belong to the member who ran `/voice delete`. "
                "To delete your own voice data, run `/voice delete` yourself."
            ),
            ephemeral=True,
        )
        return False

    @discord.ui.button(label=DELETE_LABEL, style=discord.ButtonStyle.danger, custom_id=CONFIRM_ID)
    async def confirm(self, interaction: discord.Interaction, _: discord.ui.Button[ConfirmDelete]) -> None:
        self.stop()  # first: a double click must not run a second deletion
        guild, member = guild_member(interaction)
        await interaction.response.defer()
        text = await self.cog.delete_member(guild.id, member.id)
        await interaction.edit_original_response(content=text, view=None)

    @discord.ui.button(label=CANCEL_LABEL, style=discord.ButtonStyle.secondary, custom_id=CANCEL_ID)
    async def cancel(self, interaction: discord.Interaction, _: discord.ui.Button[ConfirmDelete]) -> None:
        self.stop()
        await interaction.response.edit_message(content=tr("Cancelled: nothing was deleted."), view=None)

    async def on_timeout(self) -> None:
        use_interaction_locale(self.origin)  # the view's own timer task: the asking member's language
        try:
            await self.origin.edit_original_response(
                content=tr(
                    "No answer in time: nothing was deleted. Run `/voice delete` again when you're sure."
                ),
                view=None,
            )
        except discord.HTTPException:
            log.debug("could not edit an expired deletion prompt")

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[ConfirmDelete]
    ) -> None:
        where = {"guild_id": interaction.guild_id, "user_id": interaction.user.id}
        if isinstance(error, VoxcloneError):  # an expected refusal: its sentence says it all
            log.info("deletion button refused", extra={**where, "code": error.code})
        else:
            log.error(
                "deletion button failed", exc_info=(type(error), error, error.__traceback__), extra=where
            )
        await respond(interaction, user_message(error), ephemeral=True)


@app_commands.guild_only()
class Voice(
    commands.GroupCog,
    group_name="voice",
    group_description="Your cloned voice: see, hear, share, export, delete",
):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self.confirm_timeout_s = CONFIRM_TIMEOUT_S
        super().__init__()

    async def holdings(self, guild_id: int, user_id: int) -> Holdings:
        repos = self.bot.repos
        profile = await repos.profiles.get(guild_id, user_id)
        records = await repos.profiles.consent_records(guild_id, user_id) if profile else []
        return Holdings(
            profile=profile,
            consent_records=len(records),
            stored=await repos.profiles.stored_size(guild_id, user_id),
            shared_with=[s.grantee_user_id for s in await repos.shares.granted(guild_id, user_id)],
            shared_by=[s.owner_user_id for s in await repos.shares.received(guild_id, user_id)],
            assistant_opt_in=await repos.assistant.is_opted_in(guild_id, user_id),
            open_phrase=await repos.challenges.active(guild_id, user_id),
        )

    async def delete_member(self, guild_id: int, user_id: int) -> str:
        """Delete now, stop anything queued in that voice, and say what went."""
        deleted = await self.bot.voice_data.delete_member(
            guild_id, user_id, actor_id=user_id, reason="member_request"
        )
        return deletion_text(deleted.report, deleted.stopped)

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """What is stored about you in this server, and who may use your voice."""
        guild, member = guild_member(interaction)
        held = await self.holdings(guild.id, member.id)
        voice = await self.bot.repos.profiles.get_voice(guild.id, member.id) if held.profile else None
        rules = await self.bot.repos.settings.get(guild.id)
        await respond(interaction, embed=status_embed(guild, held, voice, rules), ephemeral=True)

    @app_commands.command(name="preview")
    async def preview(self, interaction: discord.Interaction) -> None:
        """Hear a short sample of your cloned voice (only you get it)."""
        guild, member = guild_member(interaction)
        checked = await self.bot.speaking.check_voice(member, member)
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.bot.policy.record_spoke(guild.id, checked.actor)
        voice = checked.voice
        language = voice.profile.language  # the sentence is in the language the voice was enrolled in
        request = SpeechRequest(preview_text(language), language, voice.embedding)
        wav = await self.bot.enrollment.preview(request)
        if wav is None:
            await respond(
                interaction,
                tr(
                    "I couldn't make a preview right now: the speech engine failed or was too slow. "
                    "Your voice is still stored; try again in a minute."
                ),
                ephemeral=True,
            )
            return
        await self.bot.repos.profiles.touch_last_used(guild.id, member.id)
        file = discord.File(io.BytesIO(wav), filename="voice-preview.wav")
        await respond(interaction, f"“{request.text}”", files=[file], ephemeral=True)

    @app_commands.command(name="delete")
    async def delete(self, interaction: discord.Interaction) -> None:
        """Delete your cloned voice and everything stored with it, now (asks to confirm)."""
        guild, member = guild_member(interaction)
        held = await self.holdings(guild.id, member.id)
        if not held.anything:
            await respond(interaction, tr("Nothing is stored about you in this server."), ephemeral=True)
            return
        view = ConfirmDelete(self, interaction, timeout=self.confirm_timeout_s)
        text = confirmation_text(guild, held, self.confirm_timeout_s)
        await respond(interaction, text, view=view, ephemeral=True)

    @app_commands.command(name="export")
    async def export(self, interaction: discord.Interaction) -> None:
        """Download everything stored about you in this server as a JSON file (only you get it)."""
        guild, member = guild_member(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        export = await self.bot.repos.profiles.export_member(guild.id, member.id)
        files, note = export_files(export, interaction.filesize_limit)
        await respond(interaction, note, files=files, ephemeral=True)

    @app_commands.command(name="share")
    @app_commands.describe(member="The member who may then make the bot speak in your voice")
    async def share(self, interaction: discord.Interaction, member: discord.Member) -> None:
        """Let another member speak with your cloned voice in this server."""
        guild, owner = guild_member(interaction)
        rules = await self.bot.repos.settings.get(guild.id)
        profile = await self.bot.repos.profiles.get(guild.id, owner.id)
        me = self.bot.user
        self.bot.policy.check_share(
            Actor.from_member(owner),
            rules,
            target_id=member.id,
            target_is_bot=member.bot or (me is not None and member.id == me.id),
            has_profile=profile is not None,
        )
        await self.bot.repos.shares.grant(guild.id, owner.id, member.id)
        await respond(
            interaction,
            tr(
                "{member} can now speak with your voice here (`/speak voice:`). "
                "Undo it any time with `/voice unshare`.",
                member=member.mention,
            ),
            ephemeral=True,
        )

    @app_commands.command(name="unshare")
    @app_commands.describe(member="The member who may no longer use your voice")
    async def unshare(self, interaction: discord.Interaction, member: discord.User) -> None:
        """Stop another member from speaking with your cloned voice."""
        guild, owner = guild_member(interaction)
        if await self.bot.repos.shares.revoke(guild.id, owner.id, member.id):
            text = tr("{member} can no longer use your voice.", member=member.mention)
        else:
            text = tr("You weren't sharing your voice with {member}.", member=member.mention)
        await respond(interaction, text, ephemeral=True)

    @app_commands.command(name="assistant-optin")
    async def assistant_optin(self, interaction: discord.Interaction) -> None:
        """Allow the server's voice assistant to answer in your cloned voice."""
        guild, member = guild_member(interaction)
        if await self.bot.repos.profiles.get(guild.id, member.id) is None:
            raise NoVoiceProfile(tr(NOT_ENROLLED))
        await self.bot.repos.assistant.opt_in(guild.id, member.id)
        await respond(
            interaction,
            tr(
                "The assistant may now speak in your voice here, if an admin picks it as the assistant "
                "voice. `/voice assistant-optout` withdraws this."
            ),
            ephemeral=True,
        )

    @app_commands.command(name="assistant-optout")
    async def assistant_optout(self, interaction: discord.Interaction) -> None:
        """Stop the server's voice assistant from using your cloned voice."""
        guild, member = guild_member(interaction)
        if await self.bot.repos.assistant.opt_out(guild.id, member.id):
            text = tr("The assistant will no longer use your voice.")
        else:
            text = tr("The assistant wasn't allowed to use your voice: nothing changed.")
        await respond(interaction, text, ephemeral=True)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Voice(bot))
