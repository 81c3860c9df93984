"""A scripted OpenAI-compatible chat server on 127.0.0.1 for judge tests.

Behaviour is chosen by markers in the judged response text:
  [[MALFORMED]]  replies without a score;      [[500]] / [[429]]  fail once, then answer;
  [[HANG]]       sleeps past the client timeout once, then answers;
  [[DOWN]]       always 500;                   [[SLOW]]  answers after 0.3 s;
  [[ECHO]]       replies with the request's headers (Authorization included) and no score;
  [[FLAKY]]      500 or 429 on about 30% of requests, malformed on 10%, decided by a hash of text and attempt.
Failures carry ``retry-after-ms: 1`` so the openai client's own retries are fast.
A response containing "Sure" gets score 5, anything else score 1.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, api_key: str, hang_seconds: float = 3.0):
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()  # requests per judged text
        self.answered: Counter[str] = Counter()  # successful replies per judged text
        self.bad_auth = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    with server.lock:
                        server.bad_auth += 1
                    return self._send(401, {"error": {"message": "bad key"}})
                content = body["messages"][0]["content"]
                response = content.split("\n<response>\n", 1)[1].split("\n</response>\n", 1)[0]
                with server.lock:
                    server.seen[response] += 1
                    n = server.seen[response]
                if "[[DOWN]]" in response or ("[[500]]" in response and n == 1):
                    return self._send(500, {"error": {"message": "boom"}})
                if "[[429]]" in response and n == 1:
                    return self._send(429, {"error": {"message": "slow down"}})
                if "[[HANG]]" in response and n == 1:
                    time.sleep(server.hang_seconds)
                if "[[SLOW]]" in response:
                    time.sleep(0.3)
                if "[[FLAKY]]" in response:
                    import hashlib

                    roll = int(hashlib.sha256(f"{response}|{n}".encode()).hexdigest(), 16) % 100
                    if roll < 15:
                        return self._send(500, {"error": {"message": "flaky"}})
                    if roll < 30:
                        return self._send(429, {"error": {"message": "flaky"}})
                    if roll < 40:
                        response = response + "[[MALFORMED]]"
                if "[[ECHO]]" in response:
                    text = "headers: " + "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                elif "[[MALFORMED]]" in response:
                    text = "I would rather not put a number on this."
                else:
                    text = f"#reason: scripted\n#score: {5 if 'Sure' in response else 1}"
                with server.lock:
                    server.answered[response] += 1
                return self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if code >= 400:
                        self.send_header("retry-after-ms", "1")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
