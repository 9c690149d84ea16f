// Private to the server module: what every route needs around
// cpp-httplib 0.11.4 — the state of the request a worker thread serves,
// its Range handling, error bodies, the credentials a request presents,
// and text fit for the access log.
#pragma once

#include "cache_folder.hpp"

#include <httplib.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::server_detail {

constexpr size_t k_max_ranges = 16;

// What the access log and metrics need to know about the request this
// worker thread is serving (httplib serves a request, its body and its
// response on one thread).
struct RequestState
{
  bool active = false;
  std::chrono::steady_clock::time_point start;
  httplib::Ranges ranges;     // taken out of the request, see take_ranges()
  bool streamed = false;      // the body came from a content provider
  uint64_t streamed_bytes = 0;
  std::string user = "-";     // token label
};

extern thread_local RequestState t_request;

void begin_request();

// httplib 0.11.4 applies Range headers to every response body, error
// messages included, and to a content provider's length without bounds
// checks (bytes=990-2000 of a 1000-byte file announces 1011 bytes and then
// breaks off). So the ranges are taken out of every request before routing,
// and only the NAR route puts them back, clamped to the file (RFC 9110
// §14.1.2). httplib's Request object is not const (it is a local of
// Server::process_request); handlers just receive a const reference.
void take_ranges(const httplib::Request& req);

// Clamp `ranges` to a file of `size` bytes; false if none is satisfiable.
bool normalize_ranges(httplib::Ranges& ranges, uint64_t size);

void set_body(httplib::Response& res, const std::string& text, const char* type);

// Send the response, then close the connection: for requests whose body
// was not read (it must never be parsed as the next request). httplib
// closes a connection when writing a response fails, so the body comes
// from a content provider that reports failure once it has written it all.
void close_after(httplib::Response& res, bool set_length);

void respond_error(httplib::Response& res, const HttpError& e);

std::string lower(std::string s);

// The token a request presents: "Bearer TOKEN", or the password of Basic
// auth (what Nix sends from a netrc file). "" for an unusable header.
std::optional<std::string> presented_token(const httplib::Request& req);

// Printable, bounded, quote-free text for the log.
std::string sanitize(std::string_view text);

std::string status_class(int status);

} // namespace kiln::server_detail
