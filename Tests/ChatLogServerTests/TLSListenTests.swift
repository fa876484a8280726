import AsyncHTTPClient
import ChatLog
import ChatLogTestSupport
import Foundation
import NIOSSL
import Testing

@testable import ChatLogServer

/// `--tls-cert/--tls-key`: the proxy serves HTTPS with the given certificate (made here with openssl,
/// which scripts/with-deps installs), so it may listen beyond loopback.
@Suite struct TLSListenTests {
    /// A self-signed certificate for 127.0.0.1 and its key, as PEM files in `directory`.
    static func makeCertificate(in directory: String) throws -> (certificate: String, key: String) {
        let certificate = directory + "/proxy.crt"
        let key = directory + "/proxy.key"
        let openssl = try ChildProcess(
            "/usr/bin/env",
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=chatlog-proxy-test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate,
            ])
        #expect(try openssl.wait(timeout: 120).succeeded, "openssl could not make a certificate")
        return (certificate, key)
    }

    @Test func servesHTTPSWithTheGivenCertificateAndLogsAsOverHTTP() async throws {
        try await withServerTemporaryDirectory { directory in
            let (certificate, key) = try Self.makeCertificate(in: directory)
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificate))
            try await ProxyFixture.with(
                {
                    $0.tlsCertificateFile = certificate
                    $0.tlsKeyFile = key
                    $0.host = "127.0.0.1"
                }, client: HTTPClient.Configuration(tlsConfiguration: tls)
            ) { fixture in
                #expect(fixture.base.hasPrefix("https://"))
                #expect(try await fixture.get("/healthz").status == 200)
                fixture.upstream.enqueue(.json(ProxyServerTests.chatBody))
                let response = try await fixture.post("/v1/chat/completions", ProxyServerTests.chatRequest(#"{"role":"user","content":"over tls"}"#))
                #expect(response.status == 200 && response.body == ProxyServerTests.chatBody)
                try await fixture.waitForMessages(2)
            }
        }
    }

    @Test func aNonLoopbackAddressIsAllowedWithTLS() throws {
        var configuration = ProxyConfiguration()
        configuration.host = "0.0.0.0"
        configuration.tlsCertificateFile = "/dev/null"
        configuration.tlsKeyFile = "/dev/null"
        try configuration.validate()
    }
}
