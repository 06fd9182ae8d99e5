"""``/consent``: a server's admins decide whether cloning is allowed, for whom, and how; purge; audit.

Manage Server is checked by the bot itself (the policy), not only by Discord's default permissions,
which a server can override.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from babel.numbers import format_decimal
from discord import app_commands
from discord.ext import commands

from bot.errors import AssistantVoiceNotOptedIn, PolicyError
from bot.policy import Actor
from bot.read_aloud import NO_INTENT as READ_ALOUD_NO_INTENT
from bot.replies import Refused, guild_member, respond, size_text
from core.errors import VoxcloneError
from core.i18n import N_, current_locale, ngettext, tr
from storage import AuditEntry, GuildSettings, StoredSize

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.consent")

ACTIONS = {
    "voice.enrolled": N_("enrolled a voice"),
    "voice.deleted": N_("voice deleted"),
    "voice.shared": N_("shared a voice"),
    "voice.unshared": N_("stopped sharing a voice"),
    "assistant.opted_in": N_("let the assistant use their voice"),
    "assistant.opted_out": N_("stopped the assistant using their voice"),
    "settings.updated": N_("changed settings"),
    "guild.purged": N_("server data purged"),
}
VOICE_MESSAGE_MODES = {
    "off": N_("off"),
    "transcribe": N_("transcribe"),
    "relay": N_("relay"),
    "assistant": N_("assistant"),
}


def _ids(ids: tuple[int, ...], fmt: str) -> str:
    return ", ".join(fmt.format(i) for i in ids) if ids else tr("everyone")


def _number(value: float, pattern: str = "0.##") -> str:
    """A number in the reader's notation ("2.5" in English, "2,5" in French)."""
    return format_decimal(value, format=pattern, locale=current_locale())


def settings_embed(
    s: GuildSettings, *, message_content_intent: bool, stored: StoredSize | None = None
) -> discord.Embed:
    embed = discord.Embed(
        title=tr("Voice cloning settings"),
        colour=discord.Colour.green() if s.cloning_enabled else discord.Colour.dark_grey(),
    )
    embed.add_field(
        name=tr("Cloning"), value=tr("on") if s.cloning_enabled else tr("off (nobody can enroll)")
    )
    embed.add_field(name=tr("Who may enroll"), value=_ids(s.enroll_role_ids, "<@&{}>"))
    embed.add_field(name=tr("Who may speak"), value=_ids(s.speak_role_ids, "<@&{}>"))
    embed.add_field(name=tr("Sharing voices"), value=tr("allowed") if s.allow_sharing else tr("not allowed"))
    embed.add_field(name=tr("Announce cloned speech"), value=tr("yes") if s.announce else tr("no"))
    embed.add_field(
        name=tr("Max text length"), value=ngettext("{n} character", "{n} characters", s.max_text_length)
    )
    embed.add_field(
        name=tr("Cooldown"), value=tr("{seconds} s per member", seconds=_number(s.cooldown_s, "0"))
    )
    embed.add_field(
        name=tr("Retention"),
        value=ngettext("{n} day after last use", "{n} days after last use", s.retention_days)
        if s.retention_days
        else tr("until deleted"),
    )
    channels = _ids(s.voice_message_channel_ids, "<#{}>") if s.voice_message_channel_ids else tr("none")
    mode = VOICE_MESSAGE_MODES.get(s.voice_message_mode, s.voice_message_mode)
    embed.add_field(
        name=tr("Voice messages"), value=tr("{mode} in {channels}", mode=tr(mode), channels=channels)
    )
    embed.add_field(
        name=tr("Voice message limits"),
        value=tr(
            "{minutes} min, {size} MB",
            minutes=_number(s.voice_message_max_seconds / 60),
            size=s.voice_message_max_mb,
        ),
    )
    read_aloud = _ids(s.read_aloud_channel_ids, "<#{}>") if s.read_aloud_channel_ids else tr("none")
    embed.add_field(
        name=tr("Read aloud"),
        value=tr("messages in {channels}, in their authors' voices", channels=read_aloud),
    )
    assistant_voice = (
        f"<@{s.assistant_voice_user_id}>" if s.assistant_voice_user_id else tr("the asker's own")
    )
    prompt = tr("custom") if s.llm_system_prompt else tr("default")
    embed.add_field(
        name=tr("Assistant"),
        value=tr("voice: {voice}; system prompt: {prompt}", voice=assistant_voice, prompt=prompt),
    )
    if stored is not None:
        embed.add_field(
            name=tr("Stored voice data"),
            value=tr(
                "{voices}, {recordings}: {size}",
                voices=ngettext("{n} voice", "{n} voices", stored.voices),
                recordings=ngettext(
                    "{n} consent recording", "{n} consent recordings", stored.consent_records
                ),
                size=size_text(stored.total_bytes),
            ),
        )
    if s.voice_message_mode != "off" and not message_content_intent:
        embed.add_field(
            name=tr("⚠ Automatic voice messages are not active"),
            value=tr(
                "The bot runs without the Message Content intent, so it can't read voice messages on its "
                "own. Members can still use the message commands **Transcribe** and **Answer**. The bot's "
                "operator can enable the intent in the developer portal and set "
                "`MESSAGE_CONTENT_INTENT=true`."
            ),
            inline=False,
        )
    if s.read_aloud_channel_ids and not message_content_intent:
        embed.add_field(
            name=tr("⚠ Read-aloud channels are not active"), value=tr(READ_ALOUD_NO_INTENT), inline=False
        )
    if s.updated_at is not None:
        when, member = f"{s.updated_at:%Y-%m-%d %H:%M}", f"<@{s.updated_by}>"
        footer = (
            tr("Last changed {when} UTC by {member}", when=when, member=member)
            if s.updated_by
            else tr("Last changed {when} UTC", when=when)
        )
        embed.set_footer(text=footer)
    return embed


def audit_line(entry: AuditEntry) -> str:
    when = f"<t:{int(entry.at.timestamp())}:f>"
    who = f"<@{entry.actor_id}>" if entry.actor_id else "voxclone"
    what = tr(ACTIONS[entry.action]) if entry.action in ACTIONS else entry.action
    subject = f" <@{entry.subject_id}>" if entry.subject_id and entry.subject_id != entry.actor_id else ""
    reason = entry.details.get("reason")
    fields = entry.details.get("fields")
    extra = f" ({reason})" if reason else f" ({', '.join(fields)})" if fields else ""
    return tr("{when} {who}: {what}", when=when, who=who, what=what + subject + extra)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Consent(commands.GroupCog, group_name="consent", group_description="Voice cloning settings for admins"):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        _, member = guild_member(interaction)
        try:
            self.bot.policy.check_admin(Actor.from_member(member))
        except VoxcloneError as exc:
            raise Refused(exc) from None
        return True

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """Show this server's voice cloning settings."""
        guild, _ = guild_member(interaction)
        settings = await self.bot.repos.settings.get(guild.id)
        stored = await self.bot.repos.profiles.stored_size(guild.id)
        intent = self.bot.intents.message_content
        embed = settings_embed(settings, message_content_intent=intent, stored=stored)
        await respond(interaction, embed=embed, ephemeral=True)

    @app_commands.command(name="set")
    @app_commands.describe(
        cloning="Allow members to enroll and use cloned voices",
        sharing="Let members share their voice with other members",
        announce="Post a line naming whose cloned voice is speaking (recommended)",
        max_text_length="Longest /speak text, in characters",
        cooldown="Seconds a member waits between two messages (admins are exempt)",
        retention_days="Delete voices unused for this many days (0 = keep until deleted)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        cloning: bool | None = None,
        sharing: bool | None = None,
        announce: bool | None = None,
        max_text_length: app_commands.Range[int, 20, 2000] | None = None,
        cooldown: app_commands.Range[int, 0, 3600] | None = None,
        retention_days: app_commands.Range[int, 0, 36500] | None = None,
    ) -> None:
        """Change voice cloning settings (only the options you give)."""
        changes = _given(
            cloning_enabled=cloning,
            allow_sharing=sharing,
            announce=announce,
            max_text_length=max_text_length,
            cooldown_s=cooldown,
        )
        if retention_days is not None:
            changes["retention_days"] = retention_days or None
        await self._update(interaction, changes)

    @app_commands.command(name="roles")
    @app_commands.describe(
        kind="Which right the role list controls",
        role="The role to add or remove (leave out with action 'clear')",
        action="add (default), remove, or clear the list (= everyone)",
    )
    async def roles(
        self,
        interaction: discord.Interaction,
        kind: Literal["enroll", "speak"],
        role: discord.Role | None = None,
        action: Literal["add", "remove", "clear"] = "add",
    ) -> None:
        """Limit who may enroll or speak to members with certain roles."""
        guild, _ = guild_member(interaction)
        current = await self.bot.repos.settings.get(guild.id)
        field = f"{kind}_role_ids"
        await self._update(interaction, {field: _edit_ids(getattr(current, field), role, action, "role")})

    @app_commands.command(name="voice-messages")
    @app_commands.describe(
        mode="What happens to voice messages: off, transcribe, relay (author's voice) or assistant",
        channel="A channel to add or remove (voice messages are handled only in listed channels)",
        action="add (default), remove, or clear the channel list",
        max_minutes="Longest voice message handled, in minutes (default 5)",
        max_mb="Largest voice message or audio file handled, in MB (default 25)",
    )
    async def voice_messages(
        self,
        interaction: discord.Interaction,
        mode: Literal["off", "transcribe", "relay", "assistant"] | None = None,
        channel: discord.TextChannel | None = None,
        action: Literal["add", "remove", "clear"] = "add",
        max_minutes: app_commands.Range[int, 1, 30] | None = None,
        max_mb: app_commands.Range[int, 1, 100] | None = None,
    ) -> None:
        """Choose how voice messages are handled, and in which channels."""
        guild, _ = guild_member(interaction)
        current = await self.bot.repos.settings.get(guild.id)
        changes = _given(
            voice_message_mode=mode,
            voice_message_max_seconds=max_minutes * 60 if max_minutes is not None else None,
            voice_message_max_mb=max_mb,
        )
        if channel is not None or action == "clear":
            changes["voice_message_channel_ids"] = _edit_ids(
                current.voice_message_channel_ids, channel, action, "channel"
            )
        await self._update(interaction, changes)

    @app_commands.command(name="read-aloud")
    @app_commands.describe(
        channel="A text channel whose messages are read aloud in their authors' own voices",
        action="add (default), remove, or clear the channel list",
    )
    async def read_aloud(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | None = None,
        action: Literal["add", "remove", "clear"] = "add",
    ) -> None:
        """Choose text channels read aloud in members' own voices while I'm in voice."""
        guild, _ = guild_member(interaction)
        current = await self.bot.repos.settings.get(guild.id)
        ids = _edit_ids(current.read_aloud_channel_ids, channel, action, "channel")
        await self._update(interaction, {"read_aloud_channel_ids": ids})

    @app_commands.command(name="assistant")
    @app_commands.describe(
        voice="The member whose cloned voice the assistant answers in (they must have opted in)",
        prompt="Instructions for the assistant: its system prompt",
        reset="Back to the default: voice (each member's own), prompt, or both",
    )
    async def assistant(
        self,
        interaction: discord.Interaction,
        voice: discord.Member | None = None,
        prompt: app_commands.Range[str, 1, 4000] | None = None,
        reset: Literal["voice", "prompt", "both"] | None = None,
    ) -> None:
        """Choose the voice assistant's voice and its instructions."""
        guild, admin = guild_member(interaction)
        changes: dict[str, Any] = {}
        if reset in ("voice", "both"):
            changes["assistant_voice_user_id"] = None
        if reset in ("prompt", "both"):
            changes["llm_system_prompt"] = None
        if voice is not None:
            if not await self.bot.repos.assistant.is_opted_in(guild.id, voice.id):
                raise AssistantVoiceNotOptedIn(
                    tr(
                        "{member} hasn't allowed the assistant to use their voice. Ask them first: "
                        "they can allow it with `/voice assistant-optin`.",
                        member=voice.display_name,
                    )
                )
            changes["assistant_voice_user_id"] = voice.id
        if prompt is not None:
            changes["llm_system_prompt"] = prompt
        if not changes:
            await respond(
                interaction, tr("Nothing to change: give a voice, a prompt, or reset."), ephemeral=True
            )
            return
        s = await self.bot.repos.settings.update(guild.id, updated_by=admin.id, **changes)
        log.info("assistant settings changed", extra={"guild_id": guild.id, "fields": sorted(changes)})
        owner = f"<@{s.assistant_voice_user_id}>"
        whose = (
            tr("{member}'s voice", member=owner) if s.assistant_voice_user_id else tr("the asker's own voice")
        )
        instructions = tr("your instructions") if s.llm_system_prompt else tr("the default instructions")
        text = tr(
            "Saved. The assistant answers in {voice}, with {instructions}.",
            voice=whose,
            instructions=instructions,
        )
        if s.voice_message_mode != "assistant":
            text += " " + tr(
                "Voice messages are answered automatically once "
                "`/consent voice-messages mode:assistant` is set."
            )
        await respond(interaction, text, ephemeral=True)

    @app_commands.command(name="purge")
    @app_commands.describe(member="The member whose voice data is deleted now, completely")
    async def purge(self, interaction: discord.Interaction, member: discord.User) -> None:
        """Delete a member's voice data in this server now."""
        guild, admin = guild_member(interaction)
        deleted = await self.bot.voice_data.delete_member(
            guild.id, member.id, actor_id=admin.id, reason="admin"
        )
        report = deleted.report
        if not report.anything:
            await respond(
                interaction,
                tr("{member} has no voice data in this server.", member=member.mention),
                ephemeral=True,
            )
            return
        shares = report.shares_granted + report.shares_received
        voice = tr("removed") if report.profile_deleted else tr("none")
        text = tr(
            "Deleted {member}'s voice data: voice {voice}, {records} consent record(s), {shares} share(s).",
            member=member.mention,
            voice=voice,
            records=report.consent_records,
            shares=shares,
        )
        await respond(interaction, text, ephemeral=True)

    @app_commands.command(name="audit")
    @app_commands.describe(limit="How many recent entries to show")
    async def audit(
        self, interaction: discord.Interaction, limit: app_commands.Range[int, 1, 50] = 20
    ) -> None:
        """Recent enrolments, deletions, shares and setting changes, with who and when."""
        guild, _ = guild_member(interaction)
        entries = await self.bot.repos.audit.recent(guild.id, limit)
        text = "\n".join(audit_line(e) for e in entries) or tr("Nothing has happened yet.")
        embed = discord.Embed(title=tr("Voice cloning audit log"), description=text[:4000])
        await respond(interaction, embed=embed, ephemeral=True)

    async def _update(self, interaction: discord.Interaction, changes: dict[str, Any]) -> None:
        guild, admin = guild_member(interaction)
        if not changes:
            await respond(interaction, tr("Nothing to change: give at least one option."), ephemeral=True)
            return
        settings = await self.bot.repos.settings.update(guild.id, updated_by=admin.id, **changes)
        log.info(
            "settings changed", extra={"guild_id": guild.id, "user_id": admin.id, "fields": sorted(changes)}
        )
        intent = self.bot.intents.message_content
        await respond(
            interaction,
            tr("Saved."),
            embed=settings_embed(settings, message_content_intent=intent),
            ephemeral=True,
        )


def _given(**values: Any) -> dict[str, Any]:
    """The options an admin actually gave (Discord passes the others as None)."""
    return {name: value for name, value in values.items() if value is not None}


def _edit_ids(
    current: tuple[int, ...], target: discord.abc.Snowflake | None, action: str, what: str
) -> list[int]:
    if action == "clear":
        return []
    if target is None:
        raise PolicyError(
            tr("Give a role to {action}, or use action `clear`.", action=action)
            if what == "role"
            else tr("Give a channel to {action}, or use action `clear`.", action=action)
        )
    ids = set(current)
    if action == "add":
        ids.add(target.id)
    else:
        ids.discard(target.id)
    return sorted(ids)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Consent(bot))
