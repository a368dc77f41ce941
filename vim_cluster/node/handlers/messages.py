"""message, received, recall."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import structlog

from ...errors import UNAVAILABLE_DETAIL, ClientError, CloseCode, ErrorKind, StoreUnavailable
from ...model import ChatType, Message, MessageId, UserId
from ...ports import Confirm, NewMessage, Saved
from ...protocol import frames as f
from .lookups import group_of, require_chat

if TYPE_CHECKING:
    from ..connection import Connection
    from ..context import NodeContext

log = structlog.get_logger()


async def _recipients(conn: Connection, chat_type: ChatType, chat_id: int, kind: ErrorKind) -> set[int]:
    """Everyone who sees a message of this chat: both friends, or every group member."""
    group = await require_chat(conn, chat_type, chat_id, kind)
    return {chat_id, conn.user_id} if group is None else set(group.members)


async def send(conn: Connection, command: f.SendMessage) -> None:
    ctx = conn.ctx
    await conn.ack_window()
    recipients = await _recipients(conn, command.chat_type, command.chat_id, ErrorKind.NOT_MEMBER)
    sender = UserId(conn.user_id)
    message = Message(
        id=MessageId(await ctx.ids.next_id()),
        cid=command.cid,
        from_id=sender,
        chat_id=command.chat_id,
        chat_type=command.chat_type,
        message_type=command.message_type,
        content=command.content,
        extend=command.extend,
        timestamp=ctx.clock_ms(),
    )
    pending = (UserId(command.chat_id),) if command.chat_type is ChatType.FRIEND and command.chat_id != sender else ()
    # Pipelined: the next frame is read while this one commits; the writer calls `saved` in
    # submit order, so acks and deliveries keep the order of the sends.
    conn.unacked += 1
    ctx.writer.submit(NewMessage(message, pending), functools.partial(saved, conn, command, frozenset(recipients)))


def saved(conn: Connection, command: f.SendMessage, recipients: frozenset[int],
          result: Saved | None, error: BaseException | None) -> None:
    """Once the message is durable: ack it, then deliver it. A repeated cid (the client's retry)
    delivers the stored message again: the first attempt may have been stored by a node that
    died before delivering it; clients drop duplicates by id.
    Runs in the store writer's task: it only queues frames. The connection bulkhead: a
    failure here is logged, answered `error internal` and closes this connection."""
    conn.acked_one()
    try:
        _ack_and_deliver(conn, command, recipients, result, error)
    except Exception:  # noqa: BLE001 - one connection, never the writer or the node
        log.exception("ack_failed", rid=command.rid, cid=command.cid, conn_id=conn.conn_id)
        conn.answer(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=command.rid, cid=command.cid))
        if conn.session is not None:
            conn.session.close_now(CloseCode.INTERNAL)


def _ack_and_deliver(conn: Connection, command: f.SendMessage, recipients: frozenset[int],
                     result: Saved | None, error: BaseException | None) -> None:
    ctx, rid, cid = conn.ctx, command.rid, command.cid
    if error is not None or result is None:
        _answer_commit_error(conn, error, "message_commit_failed", rid, cid)
        return
    stored = result.message
    if result.created:
        ctx.metrics.message_accepted()
        ctx.frame_log.record(stored)
    conn.answer(f.Ack(stored.cid, stored.id, stored.timestamp, rid=rid))
    # A repeated cid sent to another chat is not a retry of the stored message: its
    # recipients are not this command's.
    if result.created or (stored.chat_type is command.chat_type and stored.chat_id == command.chat_id):
        ctx.delivery.to_users(recipients, f.MessageOut(stored), exclude=conn.session_id)


async def deliver_finished(ctx: NodeContext, finished: list[Message]) -> None:
    """Messages the store writer finished after a failed commit (node/store_writer.py), to
    every session of their chats as a sent message goes, the sender's included: its `send` was
    answered `unavailable`, and this tells its devices the message exists after all (a retry
    of the cid gets the same id). A group that no longer exists gets nothing (replay has it)."""
    for message in finished:
        recipients: set[int] = {message.chat_id, message.from_id}
        if message.chat_type is ChatType.GROUP:
            group = await group_of(ctx, message.chat_id)
            if group is None:
                continue
            recipients = set(group.members)
        ctx.metrics.message_accepted()
        ctx.frame_log.record(message)
        ctx.delivery.to_users(recipients, f.MessageOut(message))


def _answer_commit_error(conn: Connection, error: BaseException | None, event: str, rid: str | None,
                         cid: str | None) -> None:
    """A failed group commit, answered on the command's connection: `unavailable` when the
    store is down, else `internal` (the store writer logged the traceback)."""
    if isinstance(error, StoreUnavailable):
        log.warning("store_unavailable", error=str(error), rid=rid, cid=cid, conn_id=conn.conn_id)
        conn.answer(f.ErrorReply(ErrorKind.UNAVAILABLE, UNAVAILABLE_DETAIL, rid=rid, cid=cid))
    else:
        log.error(event, error=repr(error), rid=rid, cid=cid, conn_id=conn.conn_id)
        conn.answer(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=rid, cid=cid))


async def received(conn: Connection, command: f.Received) -> None:
    ctx = conn.ctx
    # Pipelined like `send`: the next frames are read while this confirm waits for the
    # writer's next group commit; the receipts go out once the delete is committed.
    await conn.ack_window()
    conn.unacked += 1
    confirm = Confirm(UserId(conn.user_id), tuple(MessageId(i) for i in command.ids))
    ctx.writer.submit_confirm(confirm, functools.partial(confirmed, conn, command))


def confirmed(conn: Connection, command: f.Received, removed: list[Message], error: BaseException | None) -> None:
    """Once the confirm is committed: a receipt to the sender of each friend message it removed,
    in the order of `removed`; one sender's receipts cross the cluster together (one Deliver
    packet, not one each). Runs in the store writer's task; a failure is logged and answered
    `error internal`."""
    conn.acked_one()
    ctx, rid = conn.ctx, command.rid
    try:
        if error is not None:
            _answer_commit_error(conn, error, "confirm_commit_failed", rid, None)
            return
        receipts: dict[int, list[f.Reply]] = {}
        for message in removed:
            if message.chat_type is ChatType.FRIEND:
                receipts.setdefault(message.from_id, []).append(f.Receipt(message.id, message.chat_id, by=conn.user_id))
        for sender, replies in receipts.items():
            ctx.delivery.to_users_in_order([sender], replies)
    except Exception:  # noqa: BLE001 - one connection, never the writer or the node
        log.exception("receipts_failed", rid=rid, conn_id=conn.conn_id)
        conn.answer(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=rid))


async def recall(conn: Connection, command: f.Recall) -> None:
    ctx = conn.ctx
    message = await ctx.store(ctx.messages.get, MessageId(command.id))
    if message is None or message.from_id != conn.user_id:
        # The contract's `forbidden` for another user's message, and the same answer for an id
        # that does not exist: a different one would tell a prober which ids exist.
        raise ClientError(ErrorKind.FORBIDDEN, "only the sender may recall a message")
    window_ms = ctx.config.message.recall_window * 1000
    if ctx.clock_ms() - message.timestamp > window_ms:
        raise ClientError(ErrorKind.EXPIRED, f"messages can be recalled for {ctx.config.message.recall_window:g} s")
    # Who hears of it is decided before anything changes: a refusal must leave the message be.
    recipients = await _recipients(conn, message.chat_type, message.chat_id, ErrorKind.FORBIDDEN)
    await ctx.store(ctx.messages.recall, message.id)
    notice = f.RecallOut(message.id, message.chat_id, message.chat_type, by=conn.user_id)
    ctx.delivery.to_users(recipients, notice, exclude=conn.session_id)
    await conn.reply(f.RecallOut(message.id, message.chat_id, message.chat_type, by=conn.user_id, rid=command.rid))
    log.info("message_recalled", message_id=message.id)
