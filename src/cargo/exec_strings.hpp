// argv and envp for execve, built before fork (the child only execs).
#pragma once

#include <map>
#include <string>
#include <vector>

extern char** environ;

namespace kiln::cargo {

// NUL-terminated arrays of C strings that own their text.
class ExecStrings
{
public:
  explicit ExecStrings(std::vector<std::string> items) : m_items(std::move(items))
  {
    for (auto& item : m_items) {
      m_pointers.push_back(item.data());
    }
    m_pointers.push_back(nullptr);
  }
  ExecStrings(const ExecStrings&) = delete;
  ExecStrings& operator=(const ExecStrings&) = delete;

  char**
  get()
  {
    return m_pointers.data();
  }

  // This process's environment, less the variables `drop` names (by
  // prefix), with `overrides` set.
  static ExecStrings
  environment(const std::map<std::string, std::string>& overrides,
              const std::vector<std::string>& drop = {})
  {
    std::map<std::string, std::string> all;
    for (char** e = environ; *e; ++e) {
      std::string entry = *e;
      auto eq = entry.find('=');
      std::string name = entry.substr(0, eq);
      bool dropped = false;
      for (const auto& prefix : drop) {
        dropped |= name.starts_with(prefix);
      }
      if (!dropped && eq != std::string::npos) {
        all[name] = entry.substr(eq + 1);
      }
    }
    for (const auto& [k, v] : overrides) {
      all[k] = v;
    }
    std::vector<std::string> items;
    for (const auto& [k, v] : all) {
      items.push_back(k + "=" + v);
    }
    return ExecStrings(std::move(items));
  }

private:
  std::vector<std::string> m_items;
  std::vector<char*> m_pointers;
};

} // namespace kiln::cargo
