#include "server/stream.h"

#include <dirent.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <cerrno>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include "server/request_parse.h"

namespace merlin::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string lossy_utf8(const std::string& s) {
  if (valid_utf8(s)) return s;
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

// ---- the client's socket --------------------------------------------------------------------

namespace {

// "addr" and port of a socket address, written the way httplib writes Request::remote_addr
// (getnameinfo with NI_NUMERICHOST).
bool addr_port(const sockaddr_storage& ss, socklen_t len, std::string& addr, int& port) {
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&ss), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0)
    return false;
  addr = host;
  if (ss.ss_family == AF_INET) port = ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  else if (ss.ss_family == AF_INET6) port = ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  else return false;
  return true;
}

int find_socket(const httplib::Request& req) {
  if (req.remote_port <= 0 || req.local_port <= 0) return -1;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  const int self = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    int fd = std::atoi(e->d_name);
    if (fd == self) continue;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    std::string addr;
    int port = -1;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || !addr_port(ss, len, addr, port)) continue;
    if (port != req.remote_port || addr != req.remote_addr) continue;
    len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || !addr_port(ss, len, addr, port)) continue;
    if (port != req.local_port || addr != req.local_addr) continue;
    found = fd;
    break;
  }
  closedir(d);
  return found;
}

}  // namespace

ClientConn::ClientConn(const httplib::Request& req) : fd_(find_socket(req)) {}

bool ClientConn::alive() {
  if (gone_ || fd_ < 0) return !gone_;
  char c;
  ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;  // bytes waiting (a pipelined request): still connected
  if (n == 0) {
    gone_ = true;  // orderly shutdown by the peer
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    gone_ = true;  // ECONNRESET, ENOTCONN, ...
  }
  return !gone_;
}

// ---- reading generations --------------------------------------------------------------------

bool pump_events(const std::vector<RequestStream*>& streams,
                 const std::function<bool(size_t, const StreamEvent&)>& on_event,
                 const std::function<bool()>& alive) {
  std::vector<bool> done(streams.size(), false);
  size_t open = streams.size();
  auto cancel_all = [&] {
    for (size_t i = 0; i < streams.size(); ++i)
      if (!done[i]) streams[i]->cancel();
    return false;
  };
  auto last_check = Clock::now();
  while (open > 0) {
    bool got = false;
    for (size_t i = 0; i < streams.size(); ++i) {
      if (done[i]) continue;
      // One stream: block on it (up to the poll interval). Several: drain each without waiting.
      auto wait = streams.size() == 1 ? kClientPollMs : std::chrono::milliseconds(0);
      StreamEvent ev;
      while (!done[i] && streams[i]->next(ev, wait)) {
        got = true;
        if (ev.done) {
          done[i] = true;
          --open;
        }
        if (!on_event(i, ev)) return cancel_all();
        ev = StreamEvent{};
        wait = std::chrono::milliseconds(0);
        if (Clock::now() - last_check >= kClientPollMs) break;  // check the client between bursts too
      }
    }
    if (open == 0) break;
    // After every wake-up: each step that produces a token wakes us, so a client that left is
    // noticed within one step (or kClientPollMs while nothing is produced). One recv() each.
    if (!alive()) return cancel_all();
    last_check = Clock::now();
    if (!got && streams.size() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// ---- SSE ------------------------------------------------------------------------------------

bool Sse::raw(const std::string& s) {
  if (!sink_.write(s.data(), s.size())) return false;
  last_write_ = Clock::now();
  return true;
}

bool Sse::data(const json& j) { return raw("data: " + dump(j) + "\n\n"); }

bool Sse::event(const char* name, const json& j) { return raw(fmt::format("event: {}\ndata: {}\n\n", name, dump(j))); }

void Sse::finish() { sink_.done(); }

bool Sse::alive() {
  if (conn_ && !conn_->alive()) return false;
  auto now = Clock::now();
  if (now - last_writable_check_ > std::chrono::milliseconds(250)) {
    last_writable_check_ = now;
    if (!sink_.is_writable()) return false;
  }
  // Long queueing or prefill: an SSE comment finds a connection closed without a FIN.
  if (now - last_write_ > std::chrono::seconds(5)) return raw(": keep-alive\n\n");
  return true;
}

bool Sse::pump(const std::vector<RequestStream*>& streams,
               const std::function<bool(size_t, const StreamEvent&)>& on_event) {
  return pump_events(streams, on_event, [this] { return alive(); });
}

}  // namespace merlin::server
