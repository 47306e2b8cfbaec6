"""A local SMTP sink for the email delivery tests: prints each message it receives as a JSON line.

Usage: smtp_sink.py PORT. Prints {"ready": PORT} once listening; exits when stdin closes.
"""
import json
import sys

from aiosmtpd.controller import Controller


class Handler:
    async def handle_DATA(self, server, session, envelope):
        print(
            json.dumps(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf-8", "replace"),
                }
            ),
            flush=True,
        )
        return "250 Message accepted"


controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print(json.dumps({"ready": controller.port}), flush=True)
sys.stdin.read()
controller.stop()
