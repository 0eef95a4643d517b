#!/usr/bin/env python3
"""End-to-end tests: a real `sluice serve` process driven by the official OpenAI Python client.

    python3 tests/e2e/test_openai_client.py        # SLUICE_BIN, SLUICE_MODEL override the defaults
"""
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "debug", "sluice"))
MODEL_PATH = os.environ.get(
    "SLUICE_MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
NAME = "smollm2"
EMBED_PATH = os.environ.get("SLUICE_EMBEDDING_MODEL", os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
EMBED = os.path.basename(EMBED_PATH)
GOLDEN = os.path.join(ROOT, "crates", "sluice-model", "tests", "golden", "minilm_embeddings.json")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __enter__(self):
        self.port = free_port()
        self.log = open(os.path.join(ROOT, "target", "e2e-server.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--model", MODEL_PATH, "--served-model-name", NAME, "--port", str(self.port),
             "--threads", "2", "--embedding-model", EMBED_PATH], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice serve exited with {self.proc.returncode}; see target/e2e-server.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("sluice serve did not become ready in 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class OpenAIClientTest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server().__enter__()
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.server.port}/v1", api_key="unused",
                                   max_retries=0, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def chat(self, content, **kw):
        return self.client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": content}], **kw)

    def test_models(self):
        ids = [m.id for m in self.client.models.list().data]
        self.assertEqual(ids, [NAME, EMBED])

    def test_chat(self):
        r = self.chat("What is the capital of France?", max_tokens=24, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertLessEqual(r.usage.completion_tokens, 24)

    def test_completion(self):
        r = self.client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=6, temperature=0)
        self.assertTrue(r.choices[0].text.startswith(" Paris"), r.choices[0].text)
        self.assertEqual(r.usage.prompt_tokens, 5)
        self.assertEqual(r.usage.completion_tokens, 6)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_streaming_with_usage(self):
        whole = self.chat("Say hello.", max_tokens=16, temperature=0)
        stream = self.chat("Say hello.", max_tokens=16, temperature=0, stream=True,
                           stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_stop(self):
        full = self.client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=10,
                                              temperature=0).choices[0].text
        r = self.client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=10,
                                           temperature=0, stop=["United"])
        self.assertEqual(r.choices[0].text, full[:full.index("United")])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        streamed = "".join(c.choices[0].text for c in self.client.completions.create(
            model=NAME, prompt="The capital of France is", max_tokens=10, temperature=0, stop=["United"],
            stream=True) if c.choices)
        self.assertEqual(streamed, r.choices[0].text)

    def test_seed_reproducible(self):
        a = self.chat("Tell me a story.", max_tokens=20, temperature=1.0, seed=1234)
        b = self.chat("Tell me a story.", max_tokens=20, temperature=1.0, seed=1234)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)

    def test_n_choices(self):
        r = self.chat("Name an animal.", max_tokens=8, temperature=1.0, seed=7, n=3)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        self.assertGreaterEqual(r.usage.completion_tokens, 3)
        self.assertLessEqual(r.usage.completion_tokens, 3 * 8)
        self.assertGreater(len({c.message.content for c in r.choices}), 1)

    def test_logprobs(self):
        r = self.chat("Hi", max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertTrue(content)
        self.assertEqual(len(content[0].top_logprobs), 2)

    def test_errors(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("x", temperature=5)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("x", max_tokens=100000)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        self.assertIn("8192", e.exception.body["message"])

    def test_embeddings(self):
        import json, math
        with open(GOLDEN) as f:
            golden = json.load(f)["texts"][:8]
        texts = [g["text"] for g in golden]
        # The client asks for base64 by default and decodes it; ask for floats too.
        for fmt in [openai.NOT_GIVEN, "float"]:
            r = self.client.embeddings.create(model=EMBED, input=texts, encoding_format=fmt)
            self.assertEqual([d.index for d in r.data], list(range(len(texts))))
            self.assertEqual(r.usage.prompt_tokens, sum(len(g["ids"]) for g in golden))
            for d, g in zip(r.data, golden):
                dot = sum(a * b for a, b in zip(d.embedding, g["embedding"]))
                self.assertGreater(dot, 0.9999, g["text"])
                self.assertAlmostEqual(math.sqrt(sum(a * a for a in d.embedding)), 1.0, places=5)
        one = self.client.embeddings.create(model=EMBED, input="Hello, world!", encoding_format="float")
        self.assertEqual(len(one.data), 1)
        self.assertEqual(len(one.data[0].embedding), 384)

    def test_embedding_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.embeddings.create(model=EMBED, input=["short", "word " * 600])
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        self.assertEqual(e.exception.body["param"], "input[1]")
        r = self.client.embeddings.create(model=EMBED, input="word " * 600, extra_body={"truncate": True})
        self.assertEqual(r.usage.prompt_tokens, 512)
        with self.assertRaises(openai.NotFoundError):
            self.client.embeddings.create(model="nope", input="x")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.embeddings.create(model=EMBED, input="x", dimensions=128)
        self.assertEqual(e.exception.body["param"], "dimensions")


if __name__ == "__main__":
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: build it first (cargo build -p sluice)")
    unittest.main(verbosity=2)
