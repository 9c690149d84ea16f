// What every route of `kiln serve` needs around cpp-httplib 0.11.4 (see
// http_support.hpp).
#include "http_support.hpp"

#include <kiln/util/strings.hpp>

#include <algorithm>
#include <cctype>

namespace kiln::server_detail {

thread_local RequestState t_request;


void
begin_request()
{
  if (!t_request.active) {
    t_request = RequestState{};
    t_request.active = true;
    t_request.start = std::chrono::steady_clock::now();
  }
}

void
take_ranges(const httplib::Request& req)
{
  auto& mutable_req = const_cast<httplib::Request&>(req);
  t_request.ranges = std::move(mutable_req.ranges);
  mutable_req.ranges.clear();
}

bool
normalize_ranges(httplib::Ranges& ranges, uint64_t size)
{
  httplib::Ranges out;
  auto last_byte = static_cast<ssize_t>(size) - 1;
  for (auto [first, last] : ranges) {
    if (first < 0) { // suffix: the last `last` bytes
      if (last <= 0) {
        continue;
      }
      first = std::max<ssize_t>(0, static_cast<ssize_t>(size) - last);
      last = last_byte;
    } else {
      if (first > last_byte) {
        continue;
      }
      if (last < 0 || last > last_byte) {
        last = last_byte;
      }
      if (last < first) {
        continue;
      }
    }
    out.emplace_back(first, last);
  }
  if (out.empty()) {
    return false;
  }
  if (out.size() > k_max_ranges) {
    out.clear(); // too many pieces: send the whole file (a server may ignore Range)
  }
  ranges = std::move(out);
  return true;
}

void
set_body(httplib::Response& res, const std::string& text, const char* type)
{
  res.headers.erase("Content-Type");
  res.set_content(text, type);
}

void
close_after(httplib::Response& res, bool set_length)
{
  auto body = std::make_shared<std::string>(std::move(res.body));
  if (body->empty()) {
    body->push_back('\n');   // (assigning "\n" trips GCC 12's -Wrestrict false positive)
  }
  res.body.clear();
  std::string type = res.get_header_value("Content-Type");
  res.headers.erase("Content-Type");
  if (!res.has_header("Connection")) {
    res.set_header("Connection", "close");
  }
  if (set_length) {
    // write_response() without routing sets no Content-Length itself.
    res.set_header("Content-Length", std::to_string(body->size()));
  }
  t_request.streamed = true;
  t_request.streamed_bytes = body->size();
  res.set_content_provider(body->size(), type.empty() ? "text/plain" : type,
                           [body](size_t offset, size_t length, httplib::DataSink& sink) {
                             if (offset < body->size()) {
                               sink.write(body->data() + offset,
                                          std::min(length, body->size() - offset));
                             }
                             return false;
                           });
}

void
respond_error(httplib::Response& res, const HttpError& e)
{
  res.status = e.status();
  if (e.status() == 401) {
    if (!res.has_header("WWW-Authenticate")) {
      res.set_header("WWW-Authenticate", "Bearer realm=\"kiln\"");
    }
  }
  std::string message = e.what();
  std::replace(message.begin(), message.end(), '\n', ' ');
  set_body(res, message + "\n", "text/plain; charset=utf-8");
}

std::string
lower(std::string s)
{
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::optional<std::string>
presented_token(const httplib::Request& req)
{
  if (!req.has_header("Authorization")) {
    return std::nullopt;
  }
  std::string value = std::string(trim(req.get_header_value("Authorization")));
  auto space = value.find(' ');
  if (space == std::string::npos) {
    return std::string();
  }
  std::string scheme = lower(value.substr(0, space));
  std::string credentials = std::string(trim(std::string_view(value).substr(space + 1)));
  if (scheme == "bearer") {
    return credentials;
  }
  if (scheme == "basic") {
    try {
      auto bytes = base64_decode(credentials);
      std::string pair(bytes.begin(), bytes.end());
      auto colon = pair.find(':');
      return colon == std::string::npos ? pair : pair.substr(colon + 1);
    } catch (const Error&) {
      return std::string();
    }
  }
  return std::string();
}

std::string
sanitize(std::string_view text)
{
  std::string out;
  for (char c : text.substr(0, 300)) {
    auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f || c == '"') ? '?' : c;
  }
  if (text.size() > 300) {
    out += "...";
  }
  return out;
}

std::string
status_class(int status)
{
  if (status < 100 || status > 599) {
    return "other";
  }
  return std::to_string(status / 100) + "xx";
}

} // namespace kiln::server_detail
