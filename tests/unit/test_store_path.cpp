#include <kiln/store/store_path.hpp>
#include <kiln/util/error.hpp>

#include <catch2/catch.hpp>

using namespace kiln;

TEST_CASE("store paths match Nix's vectors", "[store-path]")
{
  StoreDir nix("/nix/store");

  SECTION("builtins.toFile \"foo\" \"bar\" (text)")
  {
    auto foo = nix.make_text_path("foo", hash_string(HashAlgo::sha256, "bar"), {});
    CHECK(nix.print(foo) == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");

    SECTION("a text object referring to it")
    {
      auto baz = nix.make_text_path("baz", hash_string(HashAlgo::sha256, nix.print(foo)), {foo});
      CHECK(nix.print(baz) == "/nix/store/5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz");
    }
  }

  SECTION("NAR-mode sha1 (the output:out case)")
  {
    ContentAddress ca{ContentAddress::Method::recursive,
                      Hash::parse_unprefixed("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33",
                                             HashAlgo::sha1)};
    CHECK(nix.print(nix.make_fixed_output_path("bar", ca)) ==
          "/nix/store/mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar");
  }

  SECTION("NAR-mode sha256 with a reference (the source case)")
  {
    ContentAddress ca{ContentAddress::Method::recursive,
                      Hash::parse_unprefixed("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1",
                                             HashAlgo::sha256)};
    std::set<StorePath> refs = {StorePath("dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo")};
    CHECK(nix.print(nix.make_fixed_output_path("baz", ca, refs)) ==
          "/nix/store/s89y431zzhmdn3k8r96rvakryddkpv2v-baz");
  }

  SECTION("hello.txt added recursively and flat (Nix 2.8)")
  {
    auto nar_hash = Hash::parse_unprefixed("04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
                                           HashAlgo::sha256);
    CHECK(nix.print(nix.make_fixed_output_path(
            "hello.txt", {ContentAddress::Method::recursive, nar_hash})) ==
          "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
    auto flat = Hash::parse_unprefixed(
      "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", HashAlgo::sha256);
    CHECK(nix.print(nix.make_fixed_output_path("hello.txt",
                                               {ContentAddress::Method::flat, flat})) ==
          "/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt");
  }
}

TEST_CASE("the store directory is part of the hash", "[store-path]")
{
  auto h = hash_string(HashAlgo::sha256, "bar");
  auto a = StoreDir("/nix/store").make_text_path("foo", h, {});
  auto b = StoreDir("/kiln/store").make_text_path("foo", h, {});
  CHECK(a.hash_part() != b.hash_part());
  CHECK(StoreDir("/kiln/store").print(b).starts_with("/kiln/store/"));
}

TEST_CASE("store path names follow Nix's rules", "[store-path]")
{
  CHECK_NOTHROW(check_store_path_name("hello-1.0_beta+x?=y"));
  CHECK_NOTHROW(check_store_path_name(std::string(211, 'a')));
  CHECK_THROWS_WITH(check_store_path_name(""), Catch::Contains("empty"));
  CHECK_THROWS_WITH(check_store_path_name(std::string(212, 'a')), Catch::Contains("limit is 211"));
  CHECK_THROWS_WITH(check_store_path_name("a b"), Catch::Contains("contains ' '"));
  CHECK_THROWS_WITH(check_store_path_name("a/b"), Catch::Contains("contains '/'"));
  CHECK_THROWS_AS(check_store_path_name("."), FormatError);
  CHECK_THROWS_AS(check_store_path_name(".."), FormatError);
  CHECK_THROWS_AS(check_store_path_name(".-x"), FormatError);
  CHECK_THROWS_AS(check_store_path_name("..-x"), FormatError);
  CHECK_THROWS_WITH(check_store_path_name("caf\xc3\xa9"), Catch::Contains("\\xc3"));
}

TEST_CASE("store paths are parsed strictly", "[store-path]")
{
  StoreDir dir("/kiln/store");
  auto p = dir.parse("/kiln/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
  CHECK(p.hash_part() == "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0");
  CHECK(p.name() == "foo");
  CHECK_THROWS_WITH(dir.parse("/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"),
                    Catch::Contains("not in the store directory"));
  CHECK_THROWS_WITH(dir.parse("/kiln/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo/bin"),
                    Catch::Contains("inside a store path"));
  CHECK_THROWS_AS(StorePath("vxjiwkjkn7x4079qvh1jkl5pn05j2aw0"), FormatError);
  CHECK_THROWS_WITH(StorePath("vxjiwkjkn7x4079qvh1jkl5pn05j2awe-foo"),
                    Catch::Contains("invalid hash character 'e'"));
  CHECK(dir.try_parse_prefix("/kiln/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo/bin/x")->name() ==
        "foo");
  CHECK_FALSE(dir.try_parse_prefix("/usr/bin").has_value());
  CHECK_THROWS_AS(StoreDir("relative/store"), UsageError);
}

TEST_CASE("content addresses print and parse as Nix writes them", "[store-path]")
{
  auto h = hash_string(HashAlgo::sha256, "abc");
  for (auto method : {ContentAddress::Method::text, ContentAddress::Method::flat,
                      ContentAddress::Method::recursive}) {
    ContentAddress ca{method, h};
    auto text = ca.to_string();
    auto back = ContentAddress::parse(text);
    CHECK(back.method == method);
    CHECK(back.hash == h);
  }
  CHECK(ContentAddress{ContentAddress::Method::recursive, h}.to_string() ==
        "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
  CHECK_THROWS_AS(ContentAddress::parse("nonsense:sha256:abc"), FormatError);
}
