import AsyncHTTPClient
import Foundation
@testable import NanoGateStorage
import NIOCore
import Testing

/// AWS Signature Version 4 against AWS's published examples, botocore's signer on inputs of our
/// own, and the S3 pieces around it (locations, configuration, listings, error documents).
@Suite(.timeLimit(.minutes(10))) struct SigV4Tests {
    /// The example credentials of Amazon S3's signing documentation.
    static let s3Example = SigV4Signer(
        credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1"
    )
    /// 2013-05-24T00:00:00Z, the time of the S3 examples.
    static let may2013 = Date(timeIntervalSince1970: 1_369_353_600)
    /// 2015-08-30T12:36:00Z, the time of the SigV4 test suite.
    static let august2015 = Date(timeIntervalSince1970: 1_440_938_160)
    /// 2026-12-01T08:30:00Z, the time of the botocore cross-checks.
    static let december2026 = Date(timeIntervalSince1970: 1_796_113_800)
    static let emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// Credentials of our own (with a session token) for the botocore cross-checks.
    static let nanogate = S3Credentials(
        accessKeyID: "AKIDNANOGATETEST", secretAccessKey: "nanogate/secret+key=example", sessionToken: "session/token+abc="
    )

    // MARK: AWS's published vectors

    /// Amazon S3 API Reference, "Authenticating Requests: Using Query Parameters (AWS Signature
    /// Version 4)", the presigned GET of examplebucket/test.txt valid 86,400 s. botocore 1.44.8's
    /// `S3SigV4QueryAuth` produces the same URL from the same inputs.
    @Test func s3PresignedURLExample() throws {
        let url = try #require(URL(string: "https://examplebucket.s3.amazonaws.com/test.txt"))
        let presigned = Self.s3Example.presignedURL(method: "GET", url: url, expires: 86_400, date: Self.may2013)
        #expect(
            presigned.absoluteString
                == "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                + "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        )
        // The page's canonical request, and the hash of it that ends its string to sign.
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            + "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        let unsigned = try #require(URL(string: "https://examplebucket.s3.amazonaws.com/test.txt?" + query))
        let canonical = SigV4Signer.canonicalRequest(method: "GET", url: unsigned, headers: [], payloadHash: SigV4Signer.unsignedPayload)
        #expect(canonical.text == ["GET", "/test.txt", query, "host:examplebucket.s3.amazonaws.com", "", "host", "UNSIGNED-PAYLOAD"].joined(separator: "\n"))
        #expect(
            Self.s3Example.stringToSign(canonicalRequest: canonical.text, date: Self.may2013)
                == "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
                + "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04"
        )
    }

    /// Amazon S3 API Reference, "Signature Calculations for the Authorization Header: Transferring
    /// Payload in a Single Chunk", Example: GET Object (the first ten bytes of test.txt). botocore
    /// 1.44.8's `S3SigV4Auth` gives the same `Authorization`.
    @Test func s3GetObjectExample() throws {
        let url = try #require(URL(string: "https://examplebucket.s3.amazonaws.com/test.txt"))
        let added = Self.s3Example.sign(method: "GET", url: url, headers: [("Range", "bytes=0-9")], payloadSHA256: Self.emptySHA256, date: Self.may2013)
        let headers = Dictionary(added, uniquingKeysWith: { first, _ in first })
        #expect(added.map { $0.0 } == ["x-amz-date", "x-amz-content-sha256", "Authorization"])
        #expect(headers["x-amz-date"] == "20130524T000000Z")
        #expect(headers["x-amz-content-sha256"] == Self.emptySHA256)
        #expect(
            headers["Authorization"]
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        )
        let canonical = SigV4Signer.canonicalRequest(
            method: "GET", url: url,
            headers: [("Range", "bytes=0-9"), ("x-amz-content-sha256", Self.emptySHA256), ("x-amz-date", "20130524T000000Z")],
            payloadHash: Self.emptySHA256
        )
        #expect(
            canonical.text
                == [
                    "GET", "/test.txt", "", "host:examplebucket.s3.amazonaws.com", "range:bytes=0-9",
                    "x-amz-content-sha256:\(Self.emptySHA256)", "x-amz-date:20130524T000000Z", "",
                    "host;range;x-amz-content-sha256;x-amz-date", Self.emptySHA256,
                ].joined(separator: "\n")
        )
        #expect(
            Self.s3Example.stringToSign(canonicalRequest: canonical.text, date: Self.may2013).hasSuffix(
                "\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
        )
    }

    /// AWS's SigV4 test suite (service `service`, us-east-1, 2015-08-30T12:36:00Z, AKIDEXAMPLE), as
    /// AWS ships it in `aws/aws-sdk-js-v3: packages/signature-v4/src/suite.fixture.ts` (and, for
    /// get-vanilla-query-order-key-case, `awslabs/aws-c-auth: tests/aws-signing-test-suite/v4/…/
    /// header-signed-request.txt`). The suite signs `host` and `x-amz-date` only.
    @Test(arguments: [
        ("get-vanilla", "GET", "https://example.amazonaws.com/", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        (
            "get-vanilla-query-order-key-case", "GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ),
        (
            "get-vanilla-query-unreserved", "GET",
            "https://example.amazonaws.com/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"
        ),
        (
            "get-unreserved", "GET", "https://example.amazonaws.com/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"
        ),
        ("get-utf8", "GET", "https://example.amazonaws.com/%E1%88%B4", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
        ("post-vanilla", "POST", "https://example.amazonaws.com/", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        (
            // Query "@#$%^" = "" and "+" = "/,?><`\";:\\|][{}", sent percent-encoded.
            "post-vanilla-query-nonunreserved", "POST",
            "https://example.amazonaws.com/?%40%23%24%25%5E=&%2B=%2F%2C%3F%3E%3C%60%22%3B%3A%5C%7C%5D%5B%7B%7D",
            "66c82657c86e26fb25238d0e69f011edc4c6df5ae71119d7cb98ed9b87393c1e"
        ),
    ])
    func awsSignatureTestSuite(name: String, method: String, url: String, signature: String) throws {
        let signer = SigV4Signer(
            credentials: S3Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1", service: "service"
        )
        let request = try #require(URL(string: url))
        let canonical = SigV4Signer.canonicalRequest(
            method: method, url: request, headers: [("X-Amz-Date", "20150830T123600Z")], payloadHash: Self.emptySHA256
        )
        #expect(canonical.signedHeaders == "host;x-amz-date", "\(name)")
        let stringToSign = signer.stringToSign(canonicalRequest: canonical.text, date: Self.august2015)
        #expect(signer.signature(stringToSign: stringToSign, date: Self.august2015) == signature, "\(name)")
    }

    /// AWS General Reference, "Examples of how to derive a signing key for Signature Version 4"
    /// (secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20120215, us-east-1, iam).
    @Test func signingKeyExample() {
        let signer = SigV4Signer(
            credentials: S3Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1", service: "iam"
        )
        let february2012 = Date(timeIntervalSince1970: 1_329_264_000)  // 2012-02-15T00:00:00Z
        #expect(SigV4Signer.hex(signer.signingKey(date: february2012)) == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d")
    }

    // MARK: Cross-checked against botocore

    /// Cross-checked against botocore 1.44.8 `generate_presigned_url('get_object', …)` with the date
    /// fixed at 2026-12-01T08:30:00Z, path-style endpoint http://localhost:9000, eu-central-1, a
    /// session token, and a key needing encoding. botocore orders the token after SignedHeaders in
    /// its URL; the parameters, and so the signature, are the same.
    @Test func presignedURLMatchesBotocorePathStyleWithSessionToken() throws {
        let location = try S3Location(storeURL: "s3://nanogate-images/images", region: "eu-central-1", endpoint: "http://localhost:9000")
        let client = S3Client(httpClient: .shared, location: location, credentials: Self.nanogate)
        let url = client.presignedGetURL(key: location.key("2026/a b+c(1)~ü.png"), expires: 600, now: Self.december2026)
        #expect(
            url == "http://localhost:9000/nanogate-images/images/2026/a%20b%2Bc%281%29~%C3%BC.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIDNANOGATETEST%2F20261201%2Feu-central-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T083000Z"
                + "&X-Amz-Expires=600&X-Amz-Security-Token=session%2Ftoken%2Babc%3D&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=60151a65f081523ad8e271da41a535fa4c7cf8dbef84fa64b4d7b3018318ce09"
        )
        let botocore = "http://localhost:9000/nanogate-images/images/2026/a%20b%2Bc%281%29~%C3%BC.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            + "&X-Amz-Credential=AKIDNANOGATETEST%2F20261201%2Feu-central-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T083000Z"
            + "&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=session%2Ftoken%2Babc%3D"
            + "&X-Amz-Signature=60151a65f081523ad8e271da41a535fa4c7cf8dbef84fa64b4d7b3018318ce09"
        let ours = try #require(URLComponents(string: url)?.queryItems)
        let theirs = try #require(URLComponents(string: botocore)?.queryItems)
        #expect(Set(ours) == Set(theirs))
    }

    /// Cross-checked against botocore 1.44.8 `generate_presigned_url` (virtual-hosted, eu-west-2,
    /// no session token, 3,600 s, date fixed at 2026-12-01T08:30:00Z): the identical URL.
    @Test func presignedURLMatchesBotocoreVirtualHosted() throws {
        let location = try S3Location(storeURL: "s3://nanogate-images", region: "eu-west-2")
        let signer = SigV4Signer(credentials: S3Credentials(accessKeyID: "AKIDNANOGATETEST", secretAccessKey: "nanogate/secret+key=example"), region: "eu-west-2")
        let url = signer.presignedURL(method: "GET", url: location.objectURL(key: "images/ab12.png"), expires: 3600, date: Self.december2026)
        #expect(
            url.absoluteString
                == "https://nanogate-images.s3.eu-west-2.amazonaws.com/images/ab12.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIDNANOGATETEST%2F20261201%2Feu-west-2%2Fs3%2Faws4_request&X-Amz-Date=20261201T083000Z"
                + "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=59d8cec402fd4b0b7502cadf561b6446cf58a65e44d2bb4a7481e8d5a8a569fb"
        )
    }

    /// Cross-checked against botocore 1.44.8 `S3SigV4Auth.add_auth` for a signed-payload PUT with a
    /// content type and a session token (date fixed at 2026-12-01T08:30:00Z).
    @Test func headerSigningMatchesBotocorePutWithSessionToken() throws {
        let signer = SigV4Signer(credentials: Self.nanogate, region: "eu-central-1")
        let url = try #require(URL(string: "http://localhost:9000/nanogate-images/images/x.png"))
        let payload = SigV4Signer.sha256Hex(Array("hello nanogate".utf8))
        #expect(payload == "335f377d90c6dbe3916da6b4a053db003afb5cec7d5d6cdc51a1428692e79613")
        let added = signer.sign(method: "PUT", url: url, headers: [("Content-Type", "image/png")], payloadSHA256: payload, date: Self.december2026)
        let headers = Dictionary(added, uniquingKeysWith: { first, _ in first })
        #expect(headers["x-amz-security-token"] == "session/token+abc=")
        #expect(
            headers["Authorization"]
                == "AWS4-HMAC-SHA256 Credential=AKIDNANOGATETEST/20261201/eu-central-1/s3/aws4_request, "
                + "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "
                + "Signature=0bad843d78672c77b53eafdb0d3f74e25bbe8f8417af441b827172f2b6f968f0"
        )
    }

    // MARK: Encoding and time

    @Test func uriEncodingKeepsOnlyUnreservedCharacters() {
        #expect(SigV4Signer.uriEncode("a b/c~d._-*+=ü", keepingSlash: true) == "a%20b/c~d._-%2A%2B%3D%C3%BC")
        #expect(SigV4Signer.uriEncode("a b/c") == "a%20b%2Fc")
    }

    @Test func presignedExpiryIsClampedToWhatS3Accepts() throws {
        let url = try #require(URL(string: "https://examplebucket.s3.amazonaws.com/test.txt"))
        let long = Self.s3Example.presignedURL(method: "GET", url: url, expires: 10_000_000, date: Self.may2013)
        #expect(long.absoluteString.contains("&X-Amz-Expires=604800&"))
        let zero = Self.s3Example.presignedURL(method: "GET", url: url, expires: 0, date: Self.may2013)
        #expect(zero.absoluteString.contains("&X-Amz-Expires=1&"))
    }

    @Test func timestampsAreUTCBasicFormat() {
        #expect(SigV4Signer.timestamp(Date(timeIntervalSince1970: 0)) == "19700101T000000Z")
        #expect(SigV4Signer.timestamp(Date(timeIntervalSince1970: 1_709_251_199)) == "20240229T235959Z")
        #expect(SigV4Signer.timestamp(Date(timeIntervalSince1970: 1_796_113_800.75)) == "20261201T083000Z")
    }

    @Test func lastModifiedTimesAreParsed() throws {
        #expect(S3Client.parseTimestamp("2026-12-01T08:30:00.000Z") == Self.december2026)
        #expect(S3Client.parseTimestamp("2026-12-01T08:30:00Z") == Self.december2026)
        let fractional = try #require(S3Client.parseTimestamp("2026-11-30T23:59:59.123Z"))
        #expect(abs(fractional.timeIntervalSince1970 - 1_796_083_199.123) < 0.000_5)
        for invalid in ["2026-13-01T00:00:00Z", "2026-12-01 08:30:00Z", "2026-12-01T08:30:00+01:00", "2026-12-01T08:30", ""] {
            #expect(S3Client.parseTimestamp(invalid) == nil, "\(invalid)")
        }
    }

    // MARK: ListObjectsV2 and error documents

    @Test func listingPageIsParsed() throws {
        let body = """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>nanogate-images</Name>
              <Prefix>images/</Prefix>
              <ContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</ContinuationToken>
              <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwN+bA==</NextContinuationToken>
              <KeyCount>3</KeyCount>
              <MaxKeys>3</MaxKeys>
              <IsTruncated>true</IsTruncated>
              <Contents>
                <Key>images/0a1b2c3d4e5f60718293a4b5c6d7e8f9.png</Key>
                <LastModified>2026-12-01T08:30:00.000Z</LastModified>
                <ETag>&quot;70ee1738b6b21e2c8a43f3a5ab0eee71&quot;</ETag>
                <ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>
                <Size>1048576</Size>
                <Owner>
                  <ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>
                  <DisplayName>ops</DisplayName>
                </Owner>
                <StorageClass>STANDARD</StorageClass>
              </Contents>
              <Contents>
                <Key>images/Tom &amp; Jerry &lt;draft&gt; &apos;1&apos;&#x0D;.png</Key>
                <LastModified>2026-11-30T23:59:59.123Z</LastModified>
                <ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag>
                <Size>0</Size>
                <StorageClass>STANDARD</StorageClass>
              </Contents>
              <Contents>
                <Key>images/été/ü.webp</Key>
                <LastModified>2026-11-30T00:00:00.000Z</LastModified>
                <Size>42</Size>
              </Contents>
            </ListBucketResult>
            """
        let page = try S3Client.parseListObjects(body)
        #expect(page.objects.map(\.key) == ["images/0a1b2c3d4e5f60718293a4b5c6d7e8f9.png", "images/Tom & Jerry <draft> '1'\r.png", "images/été/ü.webp"])
        #expect(page.objects.map(\.size) == [1_048_576, 0, 42])
        #expect(page.objects[0].lastModified == Self.december2026)
        #expect(page.objects[2].lastModified == Date(timeIntervalSince1970: 1_796_083_200 - 86_400))
        #expect(page.nextToken == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwN+bA==")
    }

    @Test func lastAndEmptyPagesHaveNoToken() throws {
        let empty = """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>nanogate-images</Name><Prefix>images/</Prefix>\
            <KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>
            """
        let page = try S3Client.parseListObjects(empty)
        #expect(page.objects.isEmpty)
        #expect(page.nextToken == nil)
        #expect(throws: S3Error.self) { try S3Client.parseListObjects("<Error><Code>InternalError</Code></Error>") }
        #expect(throws: S3Error.self) {
            try S3Client.parseListObjects("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")
        }
    }

    @Test func errorMessagesCarryCodeAndMessageOnly() {
        let body = ByteBuffer(
            string: """
                <?xml version="1.0" encoding="UTF-8"?>
                <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the \
                signature you provided. Check your key and signing method.</Message><AWSAccessKeyId>AKIDNANOGATETEST</AWSAccessKeyId>\
                <StringToSign>AWS4-HMAC-SHA256\n20261201T083000Z</StringToSign><RequestId>4442587FB7D0A2F9</RequestId></Error>
                """
        )
        let message = S3Client.errorMessage(body, reason: "Forbidden")
        #expect(message.hasPrefix("SignatureDoesNotMatch: The request signature we calculated does not match"))
        #expect(!message.contains("AKIDNANOGATETEST") && !message.contains("AWS4-HMAC-SHA256"))
        #expect(message.count <= 200)
        #expect(S3Client.errorMessage(ByteBuffer(), reason: "Forbidden") == "Forbidden")
        #expect(S3Client.errorMessage(ByteBuffer(), reason: "Moved Permanently", bucketRegion: "eu-west-1").contains("eu-west-1"))
    }

    // MARK: Locations and configuration

    @Test func virtualHostedLocation() throws {
        let location = try S3Location(storeURL: "s3://nanogate-images/generated/2026/", region: "eu-west-2")
        #expect(location.bucket == "nanogate-images")
        #expect(location.prefix == "generated/2026")
        #expect(!location.usesPathStyle)
        #expect(location.bucketURL.absoluteString == "https://nanogate-images.s3.eu-west-2.amazonaws.com/")
        #expect(
            location.objectURL(key: location.key("a b+c.png")).absoluteString
                == "https://nanogate-images.s3.eu-west-2.amazonaws.com/generated/2026/a%20b%2Bc.png"
        )
        let root = try S3Location(storeURL: "s3://nanogate-images", region: "eu-west-2")
        #expect(root.prefix == "")
        #expect(root.key("x.png") == "x.png")
    }

    @Test func pathStyleLocations() throws {
        let minio = try S3Location(storeURL: "s3://nanogate-images/images", region: "us-east-1", endpoint: "http://localhost:9000/")
        #expect(minio.endpoint == "http://localhost:9000")
        #expect(minio.bucketURL.absoluteString == "http://localhost:9000/nanogate-images")
        #expect(minio.objectURL(key: minio.key("x.png")).absoluteString == "http://localhost:9000/nanogate-images/images/x.png")
        // A dotted bucket name is not covered by S3's wildcard certificate: path-style on AWS too.
        let dotted = try S3Location(storeURL: "s3://images.example.com/p", region: "us-east-1")
        #expect(dotted.objectURL(key: "p/x.png").absoluteString == "https://s3.us-east-1.amazonaws.com/images.example.com/p/x.png")
    }

    @Test func invalidLocationsAreRefused() {
        #expect(throws: S3ConfigurationError.notAnS3URL("https://nanogate-images/x")) {
            try S3Location(storeURL: "https://nanogate-images/x", region: "us-east-1")
        }
        for bucket in ["", "ab", "Nanogate", "-images", "images_1", String(repeating: "a", count: 64)] {
            #expect(throws: S3ConfigurationError.invalidBucket(bucket)) { try S3Location(storeURL: "s3://\(bucket)/p", region: "us-east-1") }
        }
        #expect(throws: S3ConfigurationError.invalidRegion("eu west")) { try S3Location(storeURL: "s3://nanogate-images", region: "eu west") }
    }

    @Test func configurationFromEnvironment() throws {
        let configuration = try S3Configuration.fromEnvironment(
            [
                "AWS_ACCESS_KEY_ID": "AKIDNANOGATETEST", "AWS_SECRET_ACCESS_KEY": "nanogate/secret+key=example", "AWS_SESSION_TOKEN": "",
                "AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-1",
                "AWS_ENDPOINT_URL": "https://ignored.example.com", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
            ],
            storeURL: "s3://nanogate-images/images"
        )
        #expect(configuration.location.region == "eu-central-1")
        #expect(configuration.location.endpoint == "http://minio:9000")
        #expect(configuration.credentials == S3Credentials(accessKeyID: "AKIDNANOGATETEST", secretAccessKey: "nanogate/secret+key=example"))
        #expect(!"\(configuration.credentials)".contains("nanogate/secret+key=example"))

        let defaults = try S3Configuration.fromEnvironment(
            ["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"], storeURL: "s3://nanogate-images"
        )
        #expect(defaults.location.region == "us-east-1")
        #expect(defaults.location.endpoint == nil)
        #expect(defaults.credentials.sessionToken == "token")
    }

    @Test func configurationErrorsNameWhatIsWrong() {
        #expect(throws: S3ConfigurationError.missingCredentials(missing: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])) {
            try S3Configuration.fromEnvironment([:], storeURL: "s3://nanogate-images")
        }
        #expect(throws: S3ConfigurationError.missingCredentials(missing: ["AWS_SECRET_ACCESS_KEY"])) {
            try S3Configuration.fromEnvironment(["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": ""], storeURL: "s3://nanogate-images")
        }
        #expect(throws: S3ConfigurationError.invalidEndpoint(variable: "AWS_ENDPOINT_URL")) {
            try S3Configuration.fromEnvironment(["AWS_ENDPOINT_URL": "minio:9000"], storeURL: "s3://nanogate-images")
        }
        let description = S3ConfigurationError.missingCredentials(missing: ["AWS_SECRET_ACCESS_KEY"]).description
        #expect(description.contains("AWS_SECRET_ACCESS_KEY"))
    }
}
