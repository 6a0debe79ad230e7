package kaic;

import com.amazonaws.Request;
import com.amazonaws.Response;
import com.amazonaws.client.builder.AwsClientBuilder.EndpointConfiguration;
import com.amazonaws.handlers.RequestHandler2;
import com.amazonaws.regions.DefaultAwsRegionProviderChain;
import com.amazonaws.services.securitytoken.AWSSecurityTokenService;
import com.amazonaws.services.securitytoken.AWSSecurityTokenServiceClientBuilder;
import com.amazonaws.services.securitytoken.model.GetCallerIdentityRequest;
import com.amazonaws.services.securitytoken.model.GetCallerIdentityResult;

/**
 * Test client for the AWS SDK for Java 1.x: creates ONE STS client with the default
 * credential chain (as an app in a pod would) and calls sts:GetCallerIdentity
 * --count times, --interval-ms apart. Prints "OK <arn> <access_key_id>" or
 * "ERR <message>" per call; exits 0 iff all calls were OK.
 *
 * <p>access_key_id is read from the SigV4 Authorization header the signer put on the
 * request, so it is the key the SDK signed that call with.
 *
 * <p>The 1.x SDK does not read AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_STS itself, so, as
 * an app would have to, this client passes that endpoint to the builder when set.
 */
public final class StsClientTest {
  private static volatile String usedKey = "-";

  static String keyFromAuth(String auth) {
    int i = auth == null ? -1 : auth.indexOf("Credential=");
    if (i < 0) return "-";
    String rest = auth.substring(i + "Credential=".length());
    int j = rest.indexOf('/');
    return j < 0 ? "-" : rest.substring(0, j);
  }

  private static String oneLine(Throwable t) {
    return (t.getClass().getName() + ": " + t.getMessage()).replaceAll("\\s+", " ").trim();
  }

  private static String env(String name) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? null : v;
  }

  public static void main(String[] args) throws Exception {
    int count = 1;
    long intervalMs = 0;
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (a.equals("--count")) count = Integer.parseInt(args[++i]);
      else if (a.startsWith("--count=")) count = Integer.parseInt(a.substring(8));
      else if (a.equals("--interval-ms")) intervalMs = Long.parseLong(args[++i]);
      else if (a.startsWith("--interval-ms=")) intervalMs = Long.parseLong(a.substring(14));
      else {
        System.err.println("usage: java1 [--count N] [--interval-ms M]");
        System.exit(2);
      }
    }

    // Test machines have no instance metadata service and must not send traffic to
    // 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
    if (System.getenv("AWS_EC2_METADATA_DISABLED") == null
        && System.getProperty("com.amazonaws.sdk.disableEc2Metadata") == null) {
      System.setProperty("com.amazonaws.sdk.disableEc2Metadata", "true");
    }
    RequestHandler2 capture = new RequestHandler2() {
      private void record(Request<?> request) {
        usedKey = keyFromAuth(request.getHeaders().get("Authorization"));
      }

      @Override
      public void afterResponse(Request<?> request, Response<?> response) {
        record(request);
      }

      @Override
      public void afterError(Request<?> request, Response<?> response, Exception e) {
        record(request);
      }
    };
    boolean failed = false;
    AWSSecurityTokenService client;
    try {
      // No withCredentials(): the builder uses the SDK's default chain
      // (DefaultAWSCredentialsProviderChain) itself.
      AWSSecurityTokenServiceClientBuilder b =
          AWSSecurityTokenServiceClientBuilder.standard().withRequestHandlers(capture);
      String endpoint = env("AWS_ENDPOINT_URL_STS");
      if (endpoint == null) endpoint = env("AWS_ENDPOINT_URL");
      if (endpoint != null) {
        String region = new DefaultAwsRegionProviderChain().getRegion();
        b = b.withEndpointConfiguration(new EndpointConfiguration(endpoint, region));
      }
      client = b.build();
    } catch (RuntimeException e) {
      System.out.println("ERR " + oneLine(e));
      System.out.flush();
      System.exit(1);
      return;
    }
    for (int i = 0; i < count; i++) {
      if (i > 0 && intervalMs > 0) Thread.sleep(intervalMs);
      usedKey = "-";
      try {
        GetCallerIdentityResult out = client.getCallerIdentity(new GetCallerIdentityRequest());
        System.out.println("OK " + out.getArn() + " " + usedKey);
      } catch (RuntimeException e) {
        System.out.println("ERR " + oneLine(e));
        failed = true;
      }
      System.out.flush();
    }
    client.shutdown();
    System.exit(failed ? 1 : 0);
  }
}
