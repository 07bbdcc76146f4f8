"""Telegram commands: ``/status``, ``/budget``, ``/pause`` and ``/resume`` from the operators'
chats (``api``: the Bot API client; ``bot``: reading, checking, carrying out, auditing and
answering the commands)."""
