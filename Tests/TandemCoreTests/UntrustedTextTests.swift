import Testing

@testable import TandemCore

/// What a remote party chose goes into a log line quoted, escaped and cut short.
@Suite struct UntrustedTextTests {
    @Test func controlCharacters_newlinesAndEscapes_cannotForgeALine() {
        let forged = "vol0\n2026-12-07T10:00:00+0000 critical tandem: HA reset\u{1b}[31m\u{7f}\u{85}\u{2028}\"\\"
        let shown = UntrustedText.quoted(forged, limit: 200)
        #expect(!shown.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
        #expect(!shown.contains("\u{2028}"))
        #expect(
            shown
                == "\"vol0\\n2026-12-07T10:00:00+0000 critical tandem: HA reset\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\\"\\\\\""
        )
    }

    @Test func longNames_areCut_sayingHowLongTheyWere() {
        let long = String(repeating: "x", count: 16 * 1024)
        let shown = UntrustedText.quoted(long)
        #expect(shown == "\"" + String(repeating: "x", count: 64) + "\"… (16384 bytes in all)")
        #expect(UntrustedText.quoted("vol0") == "\"vol0\"")
        #expect(UntrustedText.quoted("") == "\"\"")
    }
}
