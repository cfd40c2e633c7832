import Foundation
import Logging
import TandemTestSupport
import Testing

@testable import TandemAgent

/// The watchdog's device code, against a regular file standing in for `/dev/watchdog` (these
/// containers have none): the timeout ioctl fails there and is tolerated, each feed shows in the
/// file's modification time, and a refusal stops the feeding.
@Suite struct WatchdogTests {
    func modified(_ path: String) throws -> Date {
        try #require(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date)
    }

    @Test func timeout_isWholeSecondsShorterThanTheDeadTimeLessAnInterval() {
        #expect(Watchdog.timeout(deadTime: .seconds(2), heartbeatInterval: .milliseconds(200)) == 1)
        #expect(Watchdog.timeout(deadTime: .seconds(5), heartbeatInterval: .milliseconds(200)) == 4)
        #expect(Watchdog.timeout(deadTime: .milliseconds(900), heartbeatInterval: .milliseconds(300)) == 1)
    }

    @Test func aFakeDevice_isArmedFedAndStarved() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/watchdog"
        FileManager.default.createFile(atPath: path, contents: Data([0x30]))
        let old = Date(timeIntervalSinceNow: -60)
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: path)
        let watchdog = try Watchdog(path: path, timeoutSeconds: 1, logger: Logger(label: "test"))
        #expect(watchdog.timeoutSeconds == 1, "a file refuses the ioctl; the asked timeout stands")
        watchdog.feed(refusal: nil)
        let fed = try modified(path)
        #expect(fed > old)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data([0x31]), "fed in place, not appended")
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: path)
        watchdog.feed(refusal: "the lease ended 300ms ago and this node has not stepped down")
        #expect(abs(try modified(path).timeIntervalSince(old)) < 0.01, "a refusal leaves the device to expire")
        watchdog.disarm()
    }

    @Test func aMissingDevice_refusesTheStart() {
        #expect(throws: AgentError.self) {
            try Watchdog(path: "/nonexistent/watchdog", timeoutSeconds: 1, logger: Logger(label: "test"))
        }
    }
}
