import trio

from ..support import connect


async def test_friend_message_reaches_recipient_and_sender_gets_ack(url: str) -> None:
    with trio.fail_after(20):
        async with connect(url) as alice, connect(url) as bob:
            await alice.register_login("alice")
            await bob.register_login("bob")
            await alice.ready()
            await bob.ready()
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "hello", "c1")
            message = await bob.expect("message")
            assert message["id"] == ack["id"] and message["content"] == "hello"
