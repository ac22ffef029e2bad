"""Python pika peer of the event-hub benchmark (run by scripts/bench-event-hub.sh).

usage: pika_bench.py URL RATE MESSAGES   (RATE 0 = saturation)

Same shape as examples/bench.rs: durable topic exchange and queue of its own, persistent
256-byte bodies starting with a 20-digit send timestamp (ns), pika's asynchronous
SelectConnection publisher with publisher confirms and 200 unconfirmed in flight, a
BlockingConnection consumer in its own process with prefetch 200 and manual acks. Prints one
JSON line; percentiles are exact (sorted latencies).
"""

import json
import multiprocessing as mp
import sys
import time
import uuid

import pika

IN_FLIGHT = 200
PREFETCH = 200
BODY = 256


def consume(url, queue, n, ready, out):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    lat = []
    ready.set()
    for method, _props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=120):
        if method is None:
            break
        lat.append(time.time_ns() - int(body[:20]))
        ch.basic_ack(method.delivery_tag)
        if len(lat) >= n:
            break
    t_last = time.time()
    ch.cancel()
    conn.close()
    out.put((lat, t_last))


class Publisher:
    def __init__(self, url, exchange, n, rate):
        self.exchange, self.n, self.rate = exchange, n, rate
        self.sent = self.acked = self.inflight = self.last = 0
        self.timer = False
        self.start = None
        self.conn = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self.on_open,
            on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
        )
        self.props = pika.BasicProperties(delivery_mode=2, content_type="application/octet-stream")

    def on_open(self, conn):
        conn.channel(on_open_callback=self.on_channel)

    def on_channel(self, ch):
        self.ch = ch
        ch.confirm_delivery(self.on_confirm)
        self.start = time.time()
        self.pump()

    def on_confirm(self, frame):
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            raise SystemExit("pika bench: a publish was nacked")
        k = m.delivery_tag - self.last if m.multiple else 1
        self.last = max(self.last, m.delivery_tag)
        self.inflight -= k
        self.acked += k
        if self.acked >= self.n:
            self.conn.close()
            return
        self.pump()

    def on_timer(self):
        self.timer = False
        self.pump()

    def pump(self):
        while self.sent < self.n and self.inflight < IN_FLIGHT:
            if self.rate:
                due = self.start + self.sent / self.rate
                now = time.time()
                if due > now:
                    if not self.timer:
                        self.timer = True
                        self.conn.ioloop.call_later(due - now, self.on_timer)
                    return
            body = (b"%020d" % time.time_ns()).ljust(BODY, b"x")
            self.ch.basic_publish(self.exchange, "bench.event", body, self.props)
            self.sent += 1
            self.inflight += 1

    def run(self):
        self.conn.ioloop.start()


def main():
    url, rate, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    name = "mfe.bench.%s" % uuid.uuid4().hex
    exchange, queue = name + ".events", name + ".queue"
    setup = pika.BlockingConnection(pika.URLParameters(url))
    sch = setup.channel()
    sch.exchange_declare(exchange, "topic", durable=True)
    sch.queue_declare(queue, durable=True)
    sch.queue_bind(queue, exchange, "bench.#")
    ready, out = mp.Event(), mp.Queue()
    proc = mp.Process(target=consume, args=(url, queue, n, ready, out))
    proc.start()
    ready.wait(30)
    pub = Publisher(url, exchange, n, rate)
    pub.run()
    lat, t_last = out.get(timeout=180)
    proc.join(10)
    sch.queue_delete(queue)
    sch.exchange_delete(exchange)
    setup.close()
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else 0.0

    print(json.dumps({
        "mode": "pika-async", "rate": rate, "messages": len(lat),
        "msgs_per_s": round(len(lat) / (t_last - pub.start)),
        "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
    }))


if __name__ == "__main__":
    main()
