// node clients.js URL COUNT: COUNT npm socket.io-client sockets to URL, with the client's
// defaults (polling first, then the upgrade; reconnection on) but a 2 s cap on the
// reconnection delay, so the test waits less. Each socket asks for the welcome (the
// `hello` event's acknowledgement) on every connect. Every event is one JSON line on
// stdout: {"client", "event", ...}, event one of connect, welcome, hello_error,
// connect_error (message, status: the HTTP status of a refused open, if any),
// disconnect (reason). Runs until its standard input closes; then closes every socket.
const { io } = require("socket.io-client");

const [url, count] = [process.argv[2], Number(process.argv[3])];
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const sockets = [];
for (let client = 0; client < count; client++) {
  const socket = io(url, { reconnectionDelayMax: 2000 });
  sockets.push(socket);
  socket.on("connect", async () => {
    say({ client, event: "connect", transport: socket.io.engine.transport.name });
    try {
      const welcome = await socket.timeout(5000).emitWithAck("hello", {});
      say({ client, event: "welcome", instance: welcome.instance });
    } catch (error) {
      say({ client, event: "hello_error", error: String(error) });
    }
  });
  socket.on("connect_error", (error) => {
    const description = error.description;
    say({ client, event: "connect_error", message: error.message, type: error.type || null,
          status: typeof description === "number" ? description : null });
  });
  socket.on("disconnect", (reason) => say({ client, event: "disconnect", reason }));
}
say({ event: "started" });
process.stdin.resume();
process.stdin.on("end", () => {
  for (const socket of sockets) socket.close();
  process.exit(0);
});
