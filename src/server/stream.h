// Response plumbing shared by every generation endpoint (OpenAI, Anthropic, FIM):
//   - ClientConn: the socket a request arrived on, to notice a client that went away while its
//     generation runs, streamed or not (httplib 0.11 gives a handler no way to see it);
//   - pump_events: reads the events of one or more RequestStreams until all have ended,
//     checking the client every kClientPollMs and cancelling everything when it is gone;
//   - Sse: Server-Sent Events over an httplib DataSink (data / named events, keep-alive
//     comments during long silences, [DONE], finish).
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"

namespace httplib {
class DataSink;
struct Request;
}  // namespace httplib

namespace merlin::server {

// Generated text can end in the middle of a character (or hold bytes the model made up), and
// nlohmann throws on dumping invalid UTF-8: replace rather than fail the response.
std::string dump(const nlohmann::json& j);
std::string lossy_utf8(const std::string& s);

// How often a waiting handler checks that its client is still connected. The engine frees a
// cancelled sequence at its next step, so a client that goes away is released within about
// this plus one step.
constexpr std::chrono::milliseconds kClientPollMs{10};

// The client connection of one request. httplib 0.11 does not hand a handler its socket, so it
// is found once, on the handler's thread, by scanning /proc/self/fd for the socket whose local
// and peer addresses are the request's (local_addr:local_port, remote_addr:remote_port: unique
// among open connections). alive() then peeks at it without blocking: 0 bytes means the peer
// closed (FIN), an error other than EAGAIN that it reset; pending bytes or EAGAIN mean it is
// still there. A client that half-closes its sending side while still waiting for the answer
// is taken as gone (HTTP clients do not do that). Without /proc the client is assumed present.
class ClientConn {
 public:
  explicit ClientConn(const httplib::Request& req);
  ClientConn() = default;  // no socket: always alive
  // False once the peer has closed or reset the connection (and from then on).
  bool alive();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool gone_ = false;
};

// Reads the events of every stream until each has delivered its final (done) event, calling
// on_event(i, ev) for stream i. Waits at most kClientPollMs at a time and calls alive() after
// every wake-up (each step that produces tokens wakes it), so a client that left is noticed
// within one engine step, or kClientPollMs while its request waits or prefills. When on_event or alive() returns false
// the unfinished streams are cancelled (the engine frees them at its next step) and false is
// returned.
bool pump_events(const std::vector<RequestStream*>& streams,
                 const std::function<bool(size_t, const StreamEvent&)>& on_event,
                 const std::function<bool()>& alive);

// One SSE response body. Writes return false when the client is gone.
class Sse {
 public:
  Sse(httplib::DataSink& sink, std::shared_ptr<ClientConn> conn) : sink_(sink), conn_(std::move(conn)) {}
  bool raw(const std::string& s);
  bool data(const nlohmann::json& j);                          // data: {...}\n\n
  bool event(const char* name, const nlohmann::json& j);       // event: name\ndata: {...}\n\n
  bool done_marker() { return raw("data: [DONE]\n\n"); }       // OpenAI's end of stream
  void finish();                                               // ends the chunked body
  // Still connected? Checks the socket, and after 5 s without a write sends an SSE comment
  // (ignored by clients; a write to a reset socket fails).
  bool alive();
  // pump_events with this stream's client check.
  bool pump(const std::vector<RequestStream*>& streams,
            const std::function<bool(size_t, const StreamEvent&)>& on_event);

 private:
  httplib::DataSink& sink_;
  std::shared_ptr<ClientConn> conn_;
  std::chrono::steady_clock::time_point last_write_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_writable_check_ = std::chrono::steady_clock::now();
};

}  // namespace merlin::server
