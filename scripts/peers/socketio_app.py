"""The python-socketio peer for scripts/bench_peers.sh: the minimum its docs show for a chat
relay over several processes (AsyncServer + AsyncRedisManager, served by uvicorn).

A client connects with auth {"user": ID} and joins the room ID; the event "send"
{"to", "cid", "content"} is emitted as "msg" to the room "to" (on whichever process holds it,
through Redis pub/sub) and acked with the cid.
Run: REDIS_URL=redis://127.0.0.1:6379/0 uvicorn socketio_app:app --port 9001
"""

import os

import socketio

sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(os.environ["REDIS_URL"]))
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid, environ, auth):
    await sio.enter_room(sid, auth["user"])


@sio.event
async def send(sid, data):
    await sio.emit("msg", data, room=data["to"])
    return data["cid"]
