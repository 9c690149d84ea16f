# Compiler settings for kiln's own code (not third-party code): warnings,
# sanitizers, and libstdc++ assertions in debug builds.
add_library(kiln_standard_settings INTERFACE)
target_compile_options(kiln_standard_settings INTERFACE -Wall -Wextra -Wpedantic -Wshadow=local)
target_compile_definitions(kiln_standard_settings INTERFACE
  $<$<CONFIG:Debug>:_GLIBCXX_ASSERTIONS>
  KILN_VERSION="${PROJECT_VERSION}")
# Third-party headers come in as SYSTEM includes, so -Werror holds kiln's
# code only.
if(KILN_WERROR)
  target_compile_options(kiln_standard_settings INTERFACE -Werror)
endif()
if(KILN_SANITIZE)
  target_compile_options(kiln_standard_settings INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(kiln_standard_settings INTERFACE -fsanitize=address,undefined)
endif()
