"""The Discord bot: the client, policy, the services (enrollment, speaking, voice data) and replies."""
